//! sim-backend
