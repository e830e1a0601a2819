//! The onionpost mail node (in progress).
