"""HTTP/1.1: the protocol layer (``HTTPProtocol``, over h11) and its request/response types."""
