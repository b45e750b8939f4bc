//! End-to-end scenarios: the real `kakehashi` binary, checked with tools we did not write.
//!
//! One test binary for the whole suite (builds are slow; linking many is slower). Each scenario
//! module is named for the command family it exercises.

mod support;

mod e2e {
    mod appliance;
    mod audit;
    mod backup;
    mod backup_targets;
    mod budget;
    mod cli;
    mod docs;
    mod engine_sim;
    mod est;
    mod failover;
    mod firmware;
    mod firmware_activate;
    mod firmware_rootfs;
    mod firmware_url;
    mod gateway;
    mod guide;
    mod inventory;
    mod journal_cli;
    mod locator;
    mod pki;
    mod provision;
    mod scopes;
    mod status;
    mod status_browser;
    mod uplinks;
    mod wireguard;
    mod wireguard_cli;
}
