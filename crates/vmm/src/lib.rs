//! carapace VMM (being written).
