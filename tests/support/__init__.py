"""Everything the tests (and the benchmarks) use to run real components, in one place. No test lives here.

* ``net``: ``free_port`` / ``free_ports``, the one place loopback ports are picked.
* ``helpers``: ``wait_for`` (the one wait-on-a-condition helper), ``Collector``, ``WaitSpy``, the outage contract.
* ``servers``: real etcd 3.4 and ZooKeeper 3.8 members and clusters on free ports.
* ``consul_double``: the Consul HTTP API **double** (no Consul binary can be installed here).
* ``stores``: one test store per backend (``open_store``), used by the parametrised contract suite.
* ``procs`` / ``candidate_proc``: candidate processes for the multi-process tests.
* ``cluster_scenarios``: the 3-member etcd/ZooKeeper scenarios both backends' tests run.
* ``dockerd`` / ``docker_engines``: real Docker engines on loopback and their session fixture.
* ``manager``: ``swarmha manage`` processes, CLI runs, test certificates.
* ``fault``: the fault-injection harness and the soak (``python -m tests.support.fault.soak --help``).
"""
