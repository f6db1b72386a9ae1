//! The checked-in CRD must be what the Rust types generate.

const CHECKED_IN: &str = include_str!("../../crds/datasets.swarmseed.io.yaml");

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let generated = swarmseed_crd::crd_yaml().unwrap();
    assert!(
        generated == CHECKED_IN,
        "crds/datasets.swarmseed.io.yaml is out of date with operator/crd/src/lib.rs; regenerate it with\n  \
         cargo run -p operator -- crd > crds/datasets.swarmseed.io.yaml"
    );
}
