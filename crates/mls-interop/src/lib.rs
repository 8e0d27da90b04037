//! Nothing here: the interoperability tests are in `tests/`. The crate
//! keeps OpenMLS (and the older RustCrypto majors it brings) out of every
//! crate Cloister ships.
