//! cairn-metadata
