"""Small shared kernel: the base error class, RFC 9457 problem rendering, key material helpers."""
