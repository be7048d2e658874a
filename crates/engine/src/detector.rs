//! Port-scan detector (being written).
