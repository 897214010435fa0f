"""Low-bit training quantizers: DoReFa, WRPN, PACT, XNOR/TWN/TTQ weights, binary activations, INQ."""
