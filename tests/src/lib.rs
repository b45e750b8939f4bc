//! End-to-end scenarios live in `tests/`: they run the real `kakehashi` binary against peers we did
//! not write (openssl, curl). This library is empty on purpose.
