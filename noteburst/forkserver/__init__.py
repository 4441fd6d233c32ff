"""Fresh IPython kernels forked from a preloaded template process.

Why: a plain kernel start is a new Python process that imports ipykernel,
IPython, zmq and tornado (0.35 s of CPU here) and then whatever the
notebook imports (seconds for a science stack), for every notebook.  Each
notebook must still get a kernel of its own (no notebook may see another's
state), but the imports need not be paid again: a *template* process per
interpreter and warm-up code imports them once, and each kernel is a
``fork()`` of it that sets up its own connection (ports, keys, ZMQ
context, threads, event loop) and runs ipykernel.  The imported modules
are shared copy-on-write; nothing else is.

The parts:

* :mod:`.provisioner`: :class:`~.provisioner.ForkingProvisioner`, a
  jupyter_client kernel provisioner (entry point
  ``noteburst-fork-provisioner``; a kernel spec names it in its metadata),
  so any jupyter_server can use it.  It runs in the server, keeps one
  template per (interpreter, warm-up code), and falls back to a plain
  start, with a log line that says why, when a kernel cannot be forked.
* :mod:`.template`: the template process, started by the provisioner with
  the kernel spec's interpreter as ``python -m noteburst.forkserver.template``.
* :mod:`.wire`: the few messages the two exchange over a Unix socket.

Neither imports anything else of Noteburst: the provisioner is loaded by
jupyter_server and the template by a kernel's interpreter, where the rest
of the package (and its dependencies) need not be installed.
"""
