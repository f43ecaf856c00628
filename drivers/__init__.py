"""Device drivers: one module per protocol behind the small interface in `drivers.base`."""
