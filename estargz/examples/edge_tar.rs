//! Writes the edge-case test tar to a file: `edge_tar OUT [--portable]`.
//!
//! `--portable` leaves out what the reference converter cannot carry through its TOC
//! (non-UTF-8 names, sub-second mtimes), for the ctr-remote interop fixtures.

fn main() {
    let mut args = std::env::args().skip(1);
    let out = args.next().expect("usage: edge_tar OUT [--portable]");
    let portable = args.next().as_deref() == Some("--portable");
    let tar = if portable {
        estargz::testutil::portable_edge_case_tar()
    } else {
        estargz::testutil::edge_case_tar()
    };
    std::fs::write(&out, tar).expect("write the tar");
}
