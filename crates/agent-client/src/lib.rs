//! host<->agent API (being written).
