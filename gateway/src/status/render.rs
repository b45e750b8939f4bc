//! The status page as HTML (maud templates: every value escaped, checked at compile time), its
//! stylesheet and its script. Japanese first, English on request ([`Lang`]).
//!
//! Without JavaScript the page refreshes itself every few seconds (`<meta http-equiv=refresh>`
//! inside `<noscript>`); with it, a small script fetches the same page again every two seconds
//! and swaps the `<main>` in place, so the wording lives in one place (here). Everything comes
//! from the gateway itself: the page works under `Content-Security-Policy: default-src 'self'`.

use maud::{DOCTYPE, Markup, html};

use crate::status::{Lang, Operator, Report};

/// Where the page, its JSON, stylesheet and script are.
pub const PAGE: &str = "/kakehashi/status";
pub const JSON: &str = "/kakehashi/status.json";
pub const CSS: &str = "/kakehashi/status.css";
pub const JS: &str = "/kakehashi/status.js";

/// How often the page reloads itself without JavaScript, in seconds.
const REFRESH_SECS: u32 = 5;

/// The stylesheet: large banner, readable on a phone, contrast at least 4.5:1.
pub const STYLESHEET: &str = "\
body{font-family:\"Noto Sans CJK JP\",\"Hiragino Sans\",Meiryo,sans-serif;margin:0;color:#111;background:#fff;line-height:1.5}\
main{max-width:52em;margin:0 auto;padding:1em}\
.banner{padding:1em 1.2em;border-radius:.4em;color:#fff}\
.banner h1{font-size:clamp(1.5em,5vw,2.4em);margin:0 0 .2em}\
.banner p{margin:.2em 0;font-size:1.1em}\
.normal{background:#0b6b30}.emergency{background:#a4001d}.recovery{background:#7a4b00}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3em 1em}dt{font-weight:bold}dd{margin:0}\
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #999;padding:.3em;text-align:left}\
.warn{color:#a4001d;font-weight:bold}\
footer{margin-top:2em;color:#333;font-size:.9em}\
@media (max-width:30em){dl{grid-template-columns:1fr}dd{margin-bottom:.5em}}\
";

/// The live update: fetch the page again, swap `<main>`; mark it stale if the gateway is gone.
pub const SCRIPT: &str = "\
(function(){\
function tick(){\
fetch(location.pathname+location.search,{headers:{Accept:'text/html'},credentials:'same-origin',cache:'no-store'})\
.then(function(r){if(!r.ok)throw r.status;return r.text();})\
.then(function(h){var n=new DOMParser().parseFromString(h,'text/html').getElementById('status'),o=document.getElementById('status');\
if(n&&o){n.setAttribute('data-live','1');o.replaceWith(n);}})\
.catch(function(){var o=document.getElementById('status');if(o)o.setAttribute('data-stale','1');})\
.then(function(){setTimeout(tick,2000);});}\
setTimeout(tick,2000);})();\
";

/// Japanese or English.
fn t(lang: Lang, ja: &'static str, en: &'static str) -> &'static str {
    match lang {
        Lang::Ja => ja,
        Lang::En => en,
    }
}

/// `2026-12-04T12:34:56Z` as `2026-12-04 12:34:56 UTC`.
fn when(rfc3339: &str) -> String {
    format!("{} UTC", rfc3339.trim_end_matches('Z').replacen('T', " ", 1))
}

fn percent(lang: Lang, share: Option<f64>) -> String {
    match share {
        Some(s) => format!("{:.2} %", s * 100.0),
        None => t(lang, "記録が足りません", "not enough record yet").to_owned(),
    }
}

/// The banner's title and what it means for the staff.
fn banner(lang: Lang, report: &Report) -> (String, &'static str) {
    match report.mode.as_str() {
        "emergency" => (
            t(
                lang,
                "障害時モード：ローカルで受付中",
                "Outage mode: working locally",
            )
            .to_owned(),
            t(
                lang,
                "クラウドに接続できません。受付・入力はこのまま続けられます。入力は失われず、この機器に保存され、復旧後に自動で送信されます。",
                "The cloud cannot be reached. Keep working: entries are kept on this device and sent automatically when it returns.",
            ),
        ),
        "recovery" => (
            match lang {
                Lang::Ja => format!("復旧中：送信待ち {} 件", report.journal_pending),
                Lang::En => format!("Recovering: {} waiting to be sent", report.journal_pending),
            },
            t(
                lang,
                "クラウドが復旧しました。障害中の入力を順に送信しています。作業はそのまま続けられます。",
                "The cloud is back. Entries made during the outage are being sent in order. Keep working.",
            ),
        ),
        _ => (
            t(lang, "クラウド接続中", "Connected to the cloud").to_owned(),
            t(
                lang,
                "通常どおりです。入力はそのままクラウドに保存されます。",
                "All is normal: entries go straight to the cloud.",
            ),
        ),
    }
}

/// The whole page.
pub fn page(report: &Report, lang: Lang) -> String {
    let mode = match report.mode.as_str() {
        "emergency" => "emergency",
        "recovery" => "recovery",
        _ => "normal",
    };
    let (title, meaning) = banner(lang, report);
    let other = match lang {
        Lang::Ja => ("?lang=en", "en", "English"),
        Lang::En => ("?lang=ja", "ja", "日本語"),
    };
    let markup = html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                noscript { meta http-equiv="refresh" content=(REFRESH_SECS); }
                title { (t(lang, "Kakehashi 状態", "Kakehashi status")) }
                link rel="stylesheet" href=(CSS);
                script src=(JS) defer {}
            }
            body {
                main id="status" data-mode=(mode) {
                    section class={ "banner " (mode) } role="status" aria-live="polite" {
                        h1 id="banner" { (title) }
                        p id="since" { (t(lang, "開始：", "Since: ")) (when(&report.since)) }
                        p id="meaning" { (meaning) }
                    }
                    section {
                        h2 { (t(lang, "送信待ちの入力", "Entries waiting to be sent")) }
                        dl {
                            dt { (t(lang, "送信待ち", "Waiting")) }
                            dd id="journal-pending" { (report.journal_pending) (t(lang, " 件", "")) }
                            dt { (t(lang, "最も古い入力", "Oldest")) }
                            dd { (report.journal_oldest.as_deref().map_or("-".to_owned(), when)) }
                            dt { (t(lang, "確認が必要な入力", "Needing an operator")) }
                            dd id="journal-quarantined" class=[(report.journal_quarantined > 0).then_some("warn")] {
                                (report.journal_quarantined) (t(lang, " 件", ""))
                            }
                        }
                        @if report.journal_quarantined > 0 {
                            p { (t(lang,
                                "クラウドが受け付けなかった入力があります。保守担当者に連絡してください（kakehashi journal list で確認し、再送または破棄します）。",
                                "The cloud refused some entries. Call the clinic's operator: `kakehashi journal list` shows them, to retry or discard."))
                            }
                        }
                    }
                    section {
                        h2 { (t(lang, "クラウドとの接続", "The cloud")) }
                        dl {
                            dt { (t(lang, "最後の応答", "Last answer")) }
                            dd id="last-contact" { (report.last_contact.as_deref().map_or("-".to_owned(), when)) }
                            dt { (t(lang, "稼働率（24 時間）", "Availability (24 h)")) }
                            dd { (percent(lang, report.availability_24h)) }
                            dt { (t(lang, "稼働率（7 日間）", "Availability (7 days)")) }
                            dd { (percent(lang, report.availability_7d)) }
                        }
                        @if report.paths.len() > 1 {
                            h3 { (t(lang, "回線", "Paths")) }
                            table id="paths" {
                                (head(&[t(lang, "回線", "Path"), t(lang, "状態", "State"), t(lang, "変化", "Since"), t(lang, "最後の応答", "Last answer"), t(lang, "稼働率（起動後）", "Availability (since start)")]))
                                tbody {
                                    @for p in &report.paths {
                                        tr class=[(!p.up).then_some("warn")] {
                                            td { (p.name) }
                                            td {
                                                @if p.active { (t(lang, "使用中", "in use")) }
                                                @else if p.up { (t(lang, "待機", "standby")) }
                                                @else { (t(lang, "不通", "down")) }
                                            }
                                            td { (p.since.as_deref().map_or("-".to_owned(), when)) }
                                            td { (p.last_contact.as_deref().map_or("-".to_owned(), when)) }
                                            td { (percent(lang, Some(p.availability))) }
                                        }
                                    }
                                }
                            }
                        }
                        h3 { (t(lang, "最近の障害", "Last outages")) }
                        @if report.outages.is_empty() {
                            p { (t(lang, "記録はありません。", "None recorded.")) }
                        } @else {
                            table {
                                (head(&[t(lang, "開始", "Began"), t(lang, "終了", "Ended"), t(lang, "理由", "Why")]))
                                tbody {
                                    @for o in &report.outages {
                                        tr {
                                            td { (when(&o.started)) }
                                            td { (o.ended.as_deref().map_or(t(lang, "継続中", "ongoing").to_owned(), when)) }
                                            td { (o.reason) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if let Some(op) = &report.operator {
                        (operator(op, lang))
                    }
                    footer {
                        p { (t(lang, "更新：", "Updated: ")) (when(&report.generated)) }
                        p { a href=(other.0) hreflang=(other.1) lang=(other.1) { (other.2) } }
                    }
                }
            }
        }
    };
    markup.into_string()
}

/// A table's header row.
fn head(columns: &[&str]) -> Markup {
    html! { thead { tr { @for c in columns { th scope="col" { (c) } } } } }
}

fn operator(op: &Operator, lang: Lang) -> Markup {
    html! {
        section id="operator" {
            h2 { (t(lang, "保守担当者向け", "For the operator")) }
            h3 { (t(lang, "期限が近い証明書とトークン（30 日以内）", "Certificates and tokens expiring within 30 days")) }
            @if op.expiring.is_empty() {
                p { (t(lang, "ありません。", "None.")) }
            } @else {
                ul id="expiring" {
                    @for e in &op.expiring {
                        li class="warn" {
                            (e.what) "：" (e.subject) " — " (when(&e.not_after))
                            @if e.days_left < 0 { (t(lang, "（期限切れ）", " (expired)")) }
                            @else { " (" (e.days_left) (t(lang, " 日", " days")) ")" }
                        }
                    }
                }
            }
            dl {
                dt { (t(lang, "CRL の次回更新", "CRL next update")) }
                dd class=[op.crl_stale.then_some("warn")] {
                    (op.crl_next_update.as_deref().map_or("-".to_owned(), when))
                    @if op.crl_stale { (t(lang, "（期限切れ：新しい CRL が必要です）", " (stale: a new CRL is due)")) }
                }
                dt { (t(lang, "監査ログ", "Audit log")) }
                dd class=[(op.audit_chain != "ok").then_some("warn")] { (op.audit_chain) }
                dt { (t(lang, "空き容量", "Free disk space")) }
                dd { (op.disk_free_bytes.map_or("-".to_owned(), |b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64))) }
                @if let Some(d) = &op.disk {
                    dt { (t(lang, "ディスク使用量（上限）", "Disk budget")) }
                    dd class=[(d.alert || d.journal_alert).then_some("warn")] id="disk" {
                        (crate::budget::describe(d))
                        @if let Some(why) = &d.reason {
                            (t(lang, "（警告：", " (alert: ")) (why) (t(lang, "）", ")"))
                        }
                    }
                }
                dt { (t(lang, "バージョン", "Version")) }
                dd { (op.version) }
                @if let Some(fw) = &op.firmware {
                    dt { (t(lang, "ファームウェア", "Firmware")) }
                    dd class=[fw.rolled_back.is_some().then_some("warn")] id="firmware" {
                        (t(lang, "スロット ", "slot ")) (fw.committed)
                        @if let Some(v) = &fw.committed_version { " (" (v) ")" }
                        @if let Some(trial) = &fw.trial {
                            (t(lang, "、試用中：スロット ", "; on trial: slot ")) (trial)
                            " (" (fw.bootcount) "/" (fw.bootlimit) ")"
                        }
                        @if let Some(why) = &fw.rolled_back {
                            (t(lang, "、切り戻し：", "; rolled back: ")) (why)
                        }
                    }
                }
                dt { (t(lang, "最終バックアップ", "Last backup")) }
                @match &op.backup {
                    None => dd class="warn" { (t(lang, "まだありません", "none yet")) },
                    Some(b) => dd class=[(!b.last_ok).then_some("warn")] id="backup" {
                        (b.last_good.as_deref().map_or("-".to_owned(), when))
                        @if let (false, Some(why)) = (b.last_ok, &b.last_error) {
                            (t(lang, "（前回失敗：", " (the last run failed: ")) (why) (t(lang, "）", ")"))
                        }
                    },
                }
            }
            h3 { (t(lang, "端末", "Terminals")) }
            table {
                (head(&[t(lang, "名前", "Name"), t(lang, "状態", "State"), t(lang, "接続方式", "Doors"), t(lang, "最終利用", "Last seen")]))
                tbody {
                    @for term in &op.terminals {
                        tr {
                            td { (term.name) }
                            td { (if term.enabled { t(lang, "有効", "enabled") } else { t(lang, "無効", "disabled") }) }
                            td { (term.doors) }
                            td { (term.last_seen.as_deref().map_or("-".to_owned(), when)) }
                        }
                    }
                }
            }
            h3 { (t(lang, "最近の拒否", "Recent refusals")) }
            @if op.recent_refusals.is_empty() {
                p { (t(lang, "ありません。", "None.")) }
            } @else {
                table id="refusals" {
                    (head(&[t(lang, "時刻", "Time"), t(lang, "端末", "Terminal"), t(lang, "利用者", "User"), t(lang, "要求", "Request"), t(lang, "理由", "Reason")]))
                    tbody {
                        @for r in &op.recent_refusals {
                            tr {
                                td { (when(&r.time)) }
                                td { (r.terminal.as_deref().unwrap_or("-")) }
                                td { (r.user.as_deref().unwrap_or("-")) }
                                td { (r.request.as_deref().unwrap_or("-")) }
                                td { (r.reason) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Expiring, Outage};

    pub(crate) fn report(mode: &str, operator: bool) -> Report {
        Report {
            mode: mode.into(),
            since: "2026-12-04T12:00:00Z".into(),
            journal_pending: 3,
            journal_oldest: Some("2026-12-04T12:00:01Z".into()),
            journal_quarantined: 1,
            last_contact: None,
            availability_24h: Some(0.995),
            availability_7d: None,
            outages: vec![Outage {
                started: "2026-12-04T12:00:00Z".into(),
                ended: None,
                reason: "cloud down: <timeout>".into(),
            }],
            paths: vec![],
            generated: "2026-12-04T12:00:05Z".into(),
            operator: operator.then(|| Operator {
                terminals: vec![],
                expiring: vec![Expiring {
                    what: "server".into(),
                    subject: "CN=gw".into(),
                    not_after: "2026-12-10T00:00:00Z".into(),
                    days_left: 5,
                }],
                crl_next_update: None,
                crl_stale: false,
                audit_chain: "ok".into(),
                disk_free_bytes: Some(1 << 30),
                version: "0.1.0".into(),
                recent_refusals: vec![crate::audit::Refusal {
                    time: "2026-12-04T11:59:00Z".into(),
                    terminal: Some("reception-1".into()),
                    user: Some("nurse".into()),
                    request: Some("POST /api21/medicalmodv2".into()),
                    reason: "needs scope <write>".into(),
                }],
                firmware: Some(crate::status::FirmwareSlots {
                    version: "1.5.0".into(),
                    booted: Some("b".into()),
                    committed: "a".into(),
                    committed_version: Some("1.4.0".into()),
                    trial: Some("b".into()),
                    bootcount: 1,
                    bootlimit: 3,
                    rolled_back: None,
                }),
                backup: Some(crate::backup::state::State {
                    last_run: Some("2026-12-04T11:00:00.000Z".into()),
                    last_error: Some("backup.dir /mnt/usb is not a directory".into()),
                    last_good: Some("2026-12-03T11:00:00.000Z".into()),
                    ..Default::default()
                }),
                disk: Some(crate::budget::Report {
                    budget: 64 << 20,
                    used: crate::budget::Usage {
                        total: 54 << 20,
                        journal: 40 << 20,
                        ..Default::default()
                    },
                    audit_offbox_id: 0,
                    alert: true,
                    journal_alert: true,
                    reason: Some("the journal holds writes".into()),
                }),
            }),
        }
    }

    #[test]
    fn the_banner_says_the_state_in_japanese_first_and_values_are_escaped() {
        let html = page(&report("emergency", false), Lang::Ja);
        assert!(html.contains("<html lang=\"ja\">"), "{html}");
        assert!(html.contains("障害時モード：ローカルで受付中"), "{html}");
        assert!(html.contains("&lt;timeout&gt;"), "escaped: {html}");
        assert!(!html.contains("id=\"operator\""), "staff see no operator section");
        let html = page(&report("recovery", true), Lang::En);
        assert!(html.contains("Recovering: 3 waiting to be sent"), "{html}");
        assert!(html.contains("id=\"operator\""));
        assert!(html.contains("CN=gw"));
        assert!(html.contains("POST /api21/medicalmodv2"), "the refusals: {html}");
        assert!(html.contains("needs scope &lt;write&gt;"), "escaped: {html}");
        assert!(
            html.contains("the last run failed: backup.dir /mnt/usb is not a directory"),
            "a failing backup shows: {html}"
        );
        assert!(
            html.contains("slot a (1.4.0); on trial: slot b (1/3)"),
            "the firmware slots: {html}"
        );
        assert!(
            html.contains("54.0 MiB of 64.0 MiB (84 %) (alert: the journal holds writes)"),
            "the disk budget's alert: {html}"
        );
        assert!(html.len() < 50 * 1024);
    }

    #[test]
    fn several_paths_get_a_table_and_one_path_none() {
        let mut r = report("normal", false);
        assert!(!page(&r, Lang::Ja).contains("id=\"paths\""), "one path: no table");
        let path = |name: &str, up: bool, active: bool| crate::status::PathState {
            name: name.into(),
            up,
            active,
            since: Some("2026-12-04T12:00:00Z".into()),
            last_contact: None,
            availability: if up { 1.0 } else { 0.5 },
        };
        r.paths = vec![
            path("fibre", false, false),
            path("vpn", true, true),
            path("lte", true, false),
        ];
        let html = page(&r, Lang::Ja);
        assert!(html.contains("id=\"paths\""), "{html}");
        for word in ["不通", "使用中", "待機", "fibre", "vpn", "lte"] {
            assert!(html.contains(word), "{word}: {html}");
        }
        let html = page(&r, Lang::En);
        assert!(
            html.contains("in use") && html.contains("standby") && html.contains("down"),
            "{html}"
        );
    }
}
