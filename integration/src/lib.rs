//! Test harness for end-to-end tests: starts real `docker-registry`, `containerd` (with
//! starling as a proxy plugin) and `starling` processes under a private temp dir, builds
//! test images offline, and tears everything down by PID. Tests live in `tests/`.
