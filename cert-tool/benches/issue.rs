//! Issuing one terminal certificate: key generation, signing, and the index update (with its
//! fsyncs), against a CA that already holds 200 certificates, as a busy clinic's would.
//!
//! `cargo bench -p cert-tool --bench issue`. Target: under 10 ms per certificate.

use std::path::Path;

use cert_tool::ca::{self, Ca, Request};
use cert_tool::keys::KeyAlgorithm;
use cert_tool::profile::Profile;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn request(name: String) -> Request {
    Request {
        profile: Profile::Terminal,
        name,
        sans: Vec::new(),
        days: 365,
        replace: false,
        key: KeyAlgorithm::EcdsaP256.name().into(),
    }
}

fn no_passphrase() -> cert_tool::Result<cert_tool::keys::Passphrase> {
    Err(cert_tool::Error::Refused("the bench CA has no passphrase".into()))
}

fn issue(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let template = tmp.path().join("template");
    ca::init(&template, "Bench Clinic CA", 3650, KeyAlgorithm::EcdsaP256, None).expect("init");
    let signer = {
        let mut ca = Ca::open(&template).expect("open");
        let signer = ca.unlock(no_passphrase).expect("unlock");
        let out = tmp.path().join("template-out");
        std::fs::create_dir_all(&out).expect("out dir");
        for i in 0..200 {
            let req = request(format!("terminal-{i}"));
            ca.issue_to_files(
                &signer,
                &req,
                KeyAlgorithm::EcdsaP256,
                &out.join("t.pem"),
                &out.join("t.key"),
            )
            .expect("issue");
        }
        signer
    };

    let mut group = c.benchmark_group("issue_terminal");
    let mut n = 0u64;
    group.bench_function("ecdsa-p256, key + sign + index (fsync)", |b| {
        b.iter_batched(
            || {
                n += 1;
                let dir = tmp.path().join(format!("ca-{n}"));
                copy_ca(&template, &dir);
                dir
            },
            |dir| {
                let mut ca = Ca::open(&dir).expect("open");
                ca.issue_to_files(
                    &signer,
                    &request("new-terminal".into()),
                    KeyAlgorithm::EcdsaP256,
                    &dir.join("new.pem"),
                    &dir.join("new.key"),
                )
                .expect("issue");
                dir
            },
            BatchSize::PerIteration,
        );
    });
    let ca = Ca::open(&template).expect("open");
    group.bench_function("ecdsa-p256, key + sign only", |b| {
        b.iter(|| {
            let key = KeyAlgorithm::EcdsaP256.generate().expect("key");
            ca.sign(&signer, &request("x".into()), &key).expect("sign")
        });
    });
    group.finish();
}

fn copy_ca(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for f in ["ca.pem", "ca.key", "index.json"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = issue
}
criterion_main!(benches);
