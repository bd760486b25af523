//! Chooses the libtorch device.
