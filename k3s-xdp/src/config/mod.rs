//! Configuration: parsing and validation of the TOML file (placeholder, being written).
