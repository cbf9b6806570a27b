//! starling's configuration: the TOML file's types, their defaults (printable with
//! `starling config default`) and validation that names the offending key and line.
