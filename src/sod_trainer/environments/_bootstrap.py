"""Source of the trusted bootstrap that runs first inside every sandboxed interpreter."""

from __future__ import annotations

# ----------------------------------------------------------------------------------------------
# The bootstrap: trusted code that runs first inside the sandbox, sets limits, drops privileges,
# then runs the model's code (once, or in a loop for the persistent worker).
# ----------------------------------------------------------------------------------------------

_BOOTSTRAP = r'''
def _sod_boot():
    # Imports are kept to builtin modules on the success path: every millisecond here is paid
    # on every tool call (json, ast, signal, traceback and site would add ~20 ms).
    import os, sys, _ast, _signal, resource, builtins
    cfg = eval(sys.argv[1], {"__builtins__": {}})  # a literal written by the trainer
    sys.argv[:] = [""]
    for fd in cfg["cgroup_fds"]:  # join the sandbox's cgroup(s) before anything else runs
        os.write(fd, b"0")
        os.close(fd)
    if cfg["no_new_privs"]:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    for name, (soft, hard) in cfg["limits"].items():
        which = getattr(resource, name)
        current_hard = resource.getrlimit(which)[1]
        if current_hard != resource.RLIM_INFINITY:
            hard = current_hard if hard < 0 else min(hard, current_hard)
        soft = hard if soft < 0 else (soft if hard < 0 else min(soft, hard))
        resource.setrlimit(which, (soft, hard))
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    if cfg["no_new_privs"]:  # no bwrap: die with the trainer ourselves (after setuid, which clears it)
        ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
        if os.getppid() != cfg["parent"]:
            os._exit(137)
    # What `site` would do, without running .pth files: site-packages on the path, exit() and quit().
    sys.path.extend(cfg["path"])

    class Quitter:
        def __init__(self, name):
            self.name = name

        def __repr__(self):
            return f"Use {self.name}() or Ctrl-D (i.e. EOF) to exit"

        def __call__(self, code=None):
            raise SystemExit(code)

    def help(*args, **kwargs):
        import pydoc
        return pydoc.help(*args, **kwargs)

    builtins.exit, builtins.quit, builtins.help = Quitter("exit"), Quitter("quit"), help
    namespace = sys.modules["__main__"].__dict__
    for key in [k for k in namespace if k not in ("__name__", "__builtins__", "__doc__", "__spec__", "__loader__", "__package__")]:
        del namespace[key]
    namespace["__doc__"] = None

    def print_error(error, tb, source, filename):
        try:
            import linecache, traceback
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
            # The last 200 frames at most: formatting a million-frame recursion would outlast the deadline.
            report = traceback.TracebackException(type(error), error, tb, limit=-200)
            report.stack = traceback.StackSummary.from_list(
                [frame for frame in report.stack if not (frame.filename == "<string>" and frame.name == "on_alarm")])
            sys.stderr.write("".join(report.format()))
        except BaseException:  # e.g. the code broke the traceback module: say at least what happened
            sys.stderr.write(f"Traceback (most recent call last):\n{type(error).__name__}: {error}\n")

    def run(source, filename, timeout, show_last):
        try:
            tree = compile(source, filename, "exec", _ast.PyCF_ONLY_AST)
            last = None
            if show_last and tree.body and isinstance(tree.body[-1], _ast.Expr):
                value = tree.body[-1].value
                if not (isinstance(value, _ast.Call) and isinstance(value.func, _ast.Name) and value.func.id == "print"):
                    last = compile(_ast.Expression(tree.body.pop().value), filename, "eval")
            body = compile(tree, filename, "exec")
        except Exception as error:
            print_error(error, None, source, filename)
            return 1
        fired = []

        def on_alarm(signum, frame):
            if not fired:
                fired.append(True)
                raise TimeoutError(f"execution exceeded the time limit of {timeout:g} s")

        _signal.signal(_signal.SIGALRM, on_alarm)
        _signal.setitimer(_signal.ITIMER_REAL, timeout)
        try:
            exec(body, namespace)
            if last is not None:
                value = eval(last, namespace)
                if value is not None:
                    print(repr(value) if isinstance(value, str) else value)
            status = 0
        except SystemExit as exit_:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
            code = exit_.code
            if code is None:
                status = 0
            elif isinstance(code, int):
                status = code & 0xFF
            else:
                print(code, file=sys.stderr)
                status = 1
        except BaseException as error:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
            print_error(error, error.__traceback__.tb_next, source, filename)
            status = 124 if fired and isinstance(error, TimeoutError) else 1
        finally:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
        return status

    if cfg["mode"] == "oneshot":
        fd = cfg["code_fd"]
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(fd)
        status = run(b"".join(chunks).decode("utf-8", "replace"), "main.py", cfg["timeout"], cfg["show_last"])
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(status)

    import json, time, hmac
    request_fd, response_fd = cfg["ctrl"]
    cpu = cfg["cpu_per_call"]
    # Status lines carry the cell number and an HMAC under a per-worker key, so that a line the
    # model's code writes to this pipe (which it can reach) is told apart and rejected.
    key = os.read(cfg["key_fd"], 64)
    os.close(cfg["key_fd"])

    def read_exact(n):
        data = b""
        while len(data) < n:
            chunk = os.read(request_fd, n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    cell = 0
    while True:
        header = read_exact(4)
        if header is None:
            break
        payload = read_exact(int.from_bytes(header, "big"))
        if payload is None:
            break
        request = json.loads(payload)
        cell += 1
        used = resource.getrusage(resource.RUSAGE_SELF)
        used = int(used.ru_utime + used.ru_stime) + 1
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = used + cpu
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        status = run(request["code"], f"cell{cell}.py", request["timeout"], request["show_last"])
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        if cfg["kill_strays"]:
            # Kill every other process of the sandbox (kill(-1) spares the caller and the
            # namespace's init); inside our own PID namespace, wait until they are gone.
            try:
                os.kill(-1, 9)
            except OSError:
                pass
            if cfg["own_pid_namespace"]:
                me, end = os.getpid(), time.monotonic() + 2.0
                while True:
                    try:
                        while os.waitpid(-1, os.WNOHANG)[0] > 0:
                            pass
                    except ChildProcessError:
                        pass
                    if time.monotonic() > end or not [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]:
                        break
                    time.sleep(0.001)
        body = f"{request['cell']} {status}"
        mac = hmac.new(key, body.encode(), "sha256").hexdigest()
        os.write(response_fd, f"{body} {mac}\n".encode())

_sod_boot()
'''
