//! PKCS#7 "certs-only": the degenerate CMS SignedData (RFC 5652 §5, no content, no signers) that
//! EST (RFC 7030 §4.1.3, §4.2.3) answers with, and that `openssl pkcs7 -print_certs` reads.
//!
//! Built from RustCrypto's `cms` types rather than by hand, so the DER is what the ASN.1 module
//! says (SET OF sorted, lengths minimal) and not what a hand-written encoder happens to produce.

use cms::cert::x509::der::{Any, Decode, Encode, asn1::SetOfVec};
use cms::cert::{CertificateChoices, x509::Certificate};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerInfos};

use crate::error::{Error, Result};

/// id-data (RFC 5652 §4) and id-signedData (§5.1).
const ID_DATA: cms::cert::x509::der::asn1::ObjectIdentifier =
    cms::cert::x509::der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_SIGNED_DATA: cms::cert::x509::der::asn1::ObjectIdentifier =
    cms::cert::x509::der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");

/// The DER of a certs-only SignedData holding `certs` (each a DER certificate).
pub fn certs_only(certs: &[&[u8]]) -> Result<Vec<u8>> {
    let fail = |what: &'static str| {
        move |e: cms::cert::x509::der::Error| Error::Crypto {
            what,
            detail: e.to_string(),
        }
    };
    let mut set = Vec::with_capacity(certs.len());
    for der in certs {
        let cert = Certificate::from_der(der).map_err(fail("reading a certificate for PKCS#7"))?;
        set.push(CertificateChoices::Certificate(cert));
    }
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet::try_from(set).map_err(fail("the PKCS#7 certificate set"))?),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    let info = ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&signed).map_err(fail("encoding PKCS#7"))?,
    };
    info.to_der().map_err(fail("encoding PKCS#7"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_cms_decoder() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = certs_only(&[cert.der()]).unwrap();
        let info = ContentInfo::from_der(&der).unwrap();
        assert_eq!(info.content_type, ID_SIGNED_DATA);
        let signed: SignedData = info.content.decode_as().unwrap();
        assert_eq!(signed.certificates.unwrap().0.len(), 1);
        assert!(signed.signer_infos.0.is_empty());
    }
}
