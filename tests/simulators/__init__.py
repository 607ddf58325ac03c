"""Simulators of authorities that cannot run here (Consul, Kubernetes, Marathon, Triton,
Azure, GCE): real HTTP servers on loopback speaking each real API, checked against
Prometheus 2.42 or vmagent 1.79 by comparing discovered labels."""
