//! Connected components of binary masks (6-, 18- and 26-connectivity).
