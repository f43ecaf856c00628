"""OPC UA: pure node id / browse path parsing (`nodeid`), pure value and status conversion
(`convert`), config models (`config`), certificates (`certs`), address-space discovery
(`discover`), and one asyncua session per device (`driver`).

Importing this package (or `drivers.opcua.config`) does not import asyncua, so validating a
configuration never loads I/O code.
"""
