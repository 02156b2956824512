"""The runtime layer: the program the sandboxed child runs (`python -I -S -c SOURCE`).

Order matters. Before any untrusted byte is read, the child installs an audit hook whose whole
policy is literals in its own code: no globals or closure cells a script could rewrite, and
`function.__code__` cannot be replaced (that raises an audit event the hook refuses). Hooks cannot
be removed. Only then is the job (code and inputs) read from stdin. Allowed modules are imported
when the script first imports them, under the hook.

The script then runs in a fresh namespace with:
- builtins without `open`, `exec`, `eval`, `compile`, `getattr`, `globals`, ... (policy.DENIED_BUILTINS);
- an `__import__` that gives read-only copies of the allowed modules' public names (no submodules,
  so `json.codecs.open` does not exist);
- every attribute read rewritten to a guard refusing `_`-names and frame/code attributes, and
  `str.format` fields that traverse attributes;
- stdout pointed at stderr (results go out on a private descriptor).
The hook refuses sockets, processes, signals, ctypes, frame/code introspection, `gc`, reads outside
the standard library and the scratch directory, and writes outside the scratch directory.
"""

from __future__ import annotations

from engine.promotion.sandbox.policy import DENIED_ATTRIBUTES, DENIED_BUILTINS, allowed_names

DENY_EVENTS = (
    "socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.system",
    "os.kill", "os.killpg", "os.putenv", "os.unsetenv", "os.chdir", "os.setxattr", "os.removexattr",
    "os.chown", "os.lchown", "os.chflags", "os.link", "os.symlink", "os.startfile", "os.add_dll_directory",
    "pty.", "ctypes.", "signal.pthread_kill", "sys._current_frames", "sys._current_exceptions",
    "sys.settrace", "sys.setprofile", "sys.monitoring", "gc.", "object.__getattr__", "code.__new__", "function.__new__", "pickle.", "resource.", "syslog.",
    "mmap.", "shutil.", "tempfile.", "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.", "imaplib.",
    "poplib.", "nntplib.", "telnetlib.", "sqlite3.", "winreg.", "_winapi.", "cpython.", "builtins.input",
    "sys.unraisablehook", "sys.excepthook", "fcntl.", "msvcrt.", "array.__new__",
)
DENY_IMPORTS = (
    "ctypes", "_ctypes", "cffi", "gc", "_posixsubprocess", "subprocess", "multiprocessing", "_multiprocessing",
    "socket", "_socket", "select", "selectors", "ssl", "_ssl", "pty", "fcntl", "mmap", "resource", "_thread",
    "threading", "pickle", "_pickle", "code", "codeop", "inspect", "pdb", "zipimport", "sqlite3", "_sqlite3",
    "asyncio", "concurrent", "urllib", "http", "ftplib", "smtplib", "webbrowser", "tempfile", "shutil",
    "faulthandler", "tracemalloc", "_tracemalloc", "_xxsubinterpreters", "_testcapi", "_testinternalcapi",
    "pathlib", "glob", "io", "_io", "posix", "nt", "signal", "_signal", "marshal", "importlib", "runpy",
)
PATH_WRITE_EVENTS = (
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.truncate", "os.utime",
)
PATH_READ_EVENTS = ("os.listdir", "os.scandir", "os.walk", "glob.glob")

_SOURCE = r'''
import sys, os
sys.modules["__main__"].__dict__.pop("__file__", None)

def __sandbox_hook(event, args):
    if event.startswith(@DENY_EVENTS@):
        if event == "sys.addaudithook":
            raise RuntimeError("sandbox: sys.addaudithook is not allowed")
        raise PermissionError("sandbox: " + event + " is not allowed")
    if event == "sys.addaudithook":
        raise RuntimeError("sandbox: sys.addaudithook is not allowed")
    if event in ("object.__setattr__", "object.__delattr__"):
        # Classes set attributes on themselves all the time (enum, typing); never these ones.
        if len(args) > 1 and args[1] in ("__code__", "__defaults__", "__kwdefaults__", "__globals__",
                                         "__closure__", "__class__", "__bases__", "__dict__", "__getattribute__",
                                         "__getattr__", "__setattr__", "__builtins__"):
            raise PermissionError("sandbox: setting " + str(args[1]) + " is not allowed")
        return
    if event == "import":
        if args and str(args[0]).split(".")[0] in @DENY_IMPORTS@:
            raise PermissionError("sandbox: import " + str(args[0]) + " is not allowed")
        return
    if event == "open":
        path, mode, flags = args
        if path is None or isinstance(path, int):
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
        roots = (@TMP@,) if writing else @READ_ROOTS@ + (@TMP@,)
        try:
            real = os.path.realpath(os.fsdecode(path))
        except Exception:
            raise PermissionError("sandbox: opening that path is not allowed") from None
        if not any(real == r or real.startswith(r + "/") for r in roots):
            raise PermissionError("sandbox: " + ("writing " if writing else "reading ") + repr(real)[:200]
                                  + " is not allowed")
        return
    if event in @PATH_WRITE_EVENTS@ or event in @PATH_READ_EVENTS@:
        roots = (@TMP@,) if event in @PATH_WRITE_EVENTS@ else @READ_ROOTS@ + (@TMP@,)
        for a in args[:2]:
            if isinstance(a, int) or a is None:
                continue
            try:
                real = os.path.realpath(os.fsdecode(a))
            except Exception:
                raise PermissionError("sandbox: " + event + " is not allowed") from None
            if not any(real == r or real.startswith(r + "/") for r in roots):
                raise PermissionError("sandbox: " + event + " on " + repr(real)[:200] + " is not allowed")


def __sandbox_main():
    import builtins, json, signal, ast, types, string
    runtime = @RUNTIME@
    allowed = @ALLOWED@
    out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if runtime:
        sys.addaudithook(__sandbox_hook)

    def emit(payload):
        data = json.dumps(payload, ensure_ascii=True, allow_nan=False).encode()
        while data:
            data = data[os.write(out, data):]
        os._exit(0)

    # From here on, untrusted data exists in the process.
    if @SERVE@:  # a worker: the job (code, limits) on its first line, then one request per line
        requests = sys.stdin.buffer
        job = json.loads(requests.readline())
    else:
        job = json.loads(sys.stdin.buffer.read())
        os.close(0)

    if runtime:
        def plain(template):
            try:
                parts = list(string.Formatter().parse(template))
            except ValueError:
                return False
            return all(f is None or ("." not in f and "[" not in f) for _, f, _, _ in parts) and all(
                not s or "{" not in s for _, _, s, _ in parts)

        def checked_format(obj, name):
            real = getattr(obj, name)
            if isinstance(obj, str):
                template = obj

                def bound(*a, **k):
                    if not plain(template):
                        raise ValueError("sandbox: format fields may not read attributes or items")
                    return real(*a, **k)
                return bound

            def unbound(template, *a, **k):
                if not isinstance(template, str) or not plain(template):
                    raise ValueError("sandbox: format fields may not read attributes or items")
                return real(template, *a, **k)
            return unbound

        def guard(obj, name):
            if name.startswith("_") or name in @DENIED_ATTRIBUTES@:
                raise AttributeError("sandbox: attribute '" + name + "' is not allowed")
            if name in ("format", "format_map") and (obj is str or isinstance(obj, str)):
                return checked_format(obj, name)
            return getattr(obj, name)

        proxies = {}

        # What C code in allowed modules imports through the caller's builtins (datetime.strptime).
        internal = {"_strptime": ("_strptime_datetime", "_strptime_time")}

        def safe_import(name, globals=None, locals=None, fromlist=(), level=0):
            if level or (name not in allowed and name not in internal):
                raise ImportError("sandbox: import of " + repr(name) + " is not allowed")
            if name not in proxies:  # imported on first use, under the hook (it reads only the stdlib)
                module = __import__(name)
                proxy = types.ModuleType(name)
                for attr in allowed.get(name) or internal[name]:
                    setattr(proxy, attr, getattr(module, attr))
                proxies[name] = proxy
            return proxies[name]

        class Rewrite(ast.NodeTransformer):
            def visit_Name(self, node):
                if node.id.startswith("__"):
                    raise SyntaxError("sandbox: the name " + repr(node.id) + " is not allowed")
                return node

            def visit_Attribute(self, node):
                if node.attr.startswith("_") or node.attr in @DENIED_ATTRIBUTES@:
                    raise SyntaxError("sandbox: attribute '" + node.attr + "' is not allowed")
                self.generic_visit(node)
                if isinstance(node.ctx, ast.Load):
                    return ast.copy_location(ast.Call(ast.Name("__g", ast.Load()),
                                                      [node.value, ast.Constant(node.attr)], []), node)
                return node

        safe = {k: v for k, v in vars(builtins).items()
                if not k.startswith("_") and k not in @DENIED_BUILTINS@}
        safe["__build_class__"] = builtins.__build_class__
        safe["__import__"] = safe_import
        safe["__g"] = guard
    try:
        if runtime:
            tree = Rewrite().visit(ast.parse(job["code"], "promoted.py"))
            code = compile(ast.fix_missing_locations(tree), "promoted.py", "exec")
            namespace = {"__builtins__": safe, "__name__": "promoted"}
        else:
            code = compile(job["code"], "promoted.py", "exec")
            namespace = {"__name__": "promoted"}
        exec(code, namespace)
        solve = namespace["solve"]
    except BaseException as e:
        emit({"fatal": (type(e).__name__ + ": " + str(e))[:300]})

    class Timeout(BaseException):
        pass

    def alarm(signum, frame):
        raise Timeout()

    signal.signal(signal.SIGALRM, alarm)
    if @SERVE@:
        def reply(payload):
            data = (json.dumps(payload, ensure_ascii=True, allow_nan=False) + "\n").encode()
            while data:
                data = data[os.write(out, data):]

        reply({"ready": True})
        while True:
            line = requests.readline()
            if not line:
                os._exit(0)
            inputs = json.loads(line)
            # every call gets a fresh module namespace: nothing a call leaves behind reaches the next
            namespace = {"__builtins__": safe, "__name__": "promoted"} if runtime else {"__name__": "promoted"}
            signal.setitimer(signal.ITIMER_REAL, job["per_item"])
            try:
                exec(code, namespace)
                value = namespace["solve"](dict(inputs))
                signal.setitimer(signal.ITIMER_REAL, 0)
                text = json.dumps(value, ensure_ascii=True, allow_nan=False)
                if len(text) > job["max_output"]:
                    reply({"error": "output larger than " + str(job["max_output"]) + " characters"})
                else:
                    reply({"output": json.loads(text)})
            except Timeout:
                reply({"error": "timeout"})
                os._exit(0)  # the parent starts a new worker
            except BaseException as e:
                signal.setitimer(signal.ITIMER_REAL, 0)
                try:
                    message = type(e).__name__ + ": " + str(e)
                except BaseException:
                    message = "the script raised an unprintable error"
                reply({"error": message[:300]})
    results = []
    timed_out = False
    for inputs in job["inputs"]:
        if timed_out:
            results.append({"error": "skipped: an earlier input timed out"})
            continue
        signal.setitimer(signal.ITIMER_REAL, job["per_item"])
        try:
            value = solve(dict(inputs))
            signal.setitimer(signal.ITIMER_REAL, 0)
            text = json.dumps(value, ensure_ascii=True, allow_nan=False)
            if len(text) > job["max_output"]:
                results.append({"error": "output larger than " + str(job["max_output"]) + " characters"})
            else:
                results.append({"output": json.loads(text)})
        except Timeout:
            timed_out = True
            results.append({"error": "timeout"})
        except BaseException as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            try:
                message = type(e).__name__ + ": " + str(e)
            except BaseException:
                message = "the script raised an unprintable error"
            results.append({"error": message[:300]})
    emit({"results": results})


sys.modules["__main__"].__dict__.pop("__sandbox_main")()
'''


def child_source(*, tmp: str, read_roots: tuple[str, ...], runtime: bool, serve: bool = False) -> str:
    """The child's program with its policy written in as literals (see the module docstring).
    `serve`: a long-lived worker answering one request per line (see `sandbox.worker`)."""
    values = {
        "@SERVE@": repr(serve),
        "@DENY_EVENTS@": repr(DENY_EVENTS), "@DENY_IMPORTS@": repr(DENY_IMPORTS),
        "@PATH_WRITE_EVENTS@": repr(PATH_WRITE_EVENTS), "@PATH_READ_EVENTS@": repr(PATH_READ_EVENTS),
        "@TMP@": repr(tmp), "@READ_ROOTS@": repr(tuple(read_roots)), "@RUNTIME@": repr(runtime),
        "@ALLOWED@": repr(allowed_names()), "@DENIED_ATTRIBUTES@": repr(tuple(sorted(DENIED_ATTRIBUTES))),
        "@DENIED_BUILTINS@": repr(tuple(sorted(DENIED_BUILTINS))),
    }
    source = _SOURCE
    for key, value in values.items():
        source = source.replace(key, value)
    return source
