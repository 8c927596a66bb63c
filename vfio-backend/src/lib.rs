//! vfio-backend
