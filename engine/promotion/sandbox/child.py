"""The runtime layer: the program the sandboxed child runs (`python -I -S -c SOURCE`).

Order matters. Before any untrusted byte is read, the child installs the OS layer's seccomp filter
(when the OS layer is on) and an audit hook whose whole policy is literals in its own code, and
every name it uses (`str`, `isinstance`, `os.path.realpath`, ...) a parameter bound when it was
defined: no globals or closure cells a script could rewrite, and `function.__code__` or
`__defaults__` cannot be replaced (that raises an audit event the hook refuses). Hooks cannot be
removed. Only then is the job (code and inputs) read from stdin. Allowed modules are imported when
the script first imports them, under the hook.

The script then runs in a fresh namespace with:
- builtins without `open`, `exec`, `eval`, `compile`, `getattr`, `globals`, ... (policy.DENIED_BUILTINS);
- an `__import__` that gives read-only copies of the allowed modules' public names (no submodules,
  so `json.codecs.open` does not exist);
- every attribute read rewritten to a guard refusing `_`-names and frame/code attributes, and
  `str.format` / `format_map` fields that traverse attributes, however the method was reached
  (a literal, a str subclass, `super()`);
- class patterns checked: no `case C(_x=...)` keyword naming a `_` attribute, and before a `match`
  runs, each class with positional sub-patterns is captured and its `__match_args__` must be a
  plain tuple naming no `_` attribute; no `__` name may be bound or special method defined outside
  `policy.ALLOWED_DUNDER_METHODS`;
- stdout pointed at stderr (results go out on a private descriptor).
The hook refuses sockets, processes, signals, ctypes, frame/code introspection, `gc`, reads outside
the standard library and the scratch directory, and writes outside the scratch directory.

A serving worker (`serve`) never runs the script itself: per call it forks a child from its
pristine state, and that child confines itself, executes the module afresh and answers once.
"""

from __future__ import annotations

from engine.promotion.sandbox.policy import (
    ALLOWED_DUNDER_METHODS, DENIED_ATTRIBUTES, DENIED_BUILTINS, allowed_names)

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
DENIED_SETATTR = (
    "__code__", "__defaults__", "__kwdefaults__", "__globals__", "__closure__", "__class__", "__bases__", "__dict__",
    "__getattribute__", "__getattr__", "__setattr__", "__builtins__", "__match_args__", "__mro__",
)

_SOURCE = r"""
import sys, os
sys.modules["__main__"].__dict__.pop("__file__", None)


def __sandbox_hook(event, args, str=str, isinstance=isinstance, int=int, len=len, repr=repr,
                   tostr=str.__str__, realpath=os.path.realpath, fsdecode=os.fsdecode,
                   PermissionError=PermissionError, RuntimeError=RuntimeError, Exception=Exception,
                   write_flags=os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC):
    # Every name used here is a parameter bound when this function was defined, before any
    # untrusted byte existed: rebinding `any`, `str` or `os` anywhere changes nothing here.
    if event.startswith(@DENY_EVENTS@):
        if event == "sys.addaudithook":
            raise RuntimeError("sandbox: sys.addaudithook is not allowed")
        raise PermissionError("sandbox: " + event + " is not allowed")
    if event == "sys.addaudithook":
        raise RuntimeError("sandbox: sys.addaudithook is not allowed")
    if event in ("object.__setattr__", "object.__delattr__"):
        # Classes set attributes on themselves all the time (enum, typing); never these ones.
        if len(args) > 1:
            name = args[1]
            if isinstance(name, str):
                name = tostr(name)
            if name in @DENIED_SETATTR@:
                raise PermissionError("sandbox: setting " + tostr(name) + " is not allowed")
        return
    if event == "import":
        if args and isinstance(args[0], str) and tostr(args[0]).split(".")[0] in @DENY_IMPORTS@:
            raise PermissionError("sandbox: import " + tostr(args[0]) + " is not allowed")
        return
    if event == "open":
        path, mode, flags = args
        if path is None or isinstance(path, int):
            return
        writing = (isinstance(mode, str) and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)) or (
            isinstance(flags, int) and flags & write_flags)
        roots = (@TMP@,) if writing else @READ_ROOTS@ + (@TMP@,)
        try:
            real = tostr(realpath(tostr(fsdecode(path))))
        except Exception:
            raise PermissionError("sandbox: opening that path is not allowed") from None
        for r in roots:
            if real == r or real.startswith(r + "/"):
                return
        raise PermissionError("sandbox: " + ("writing " if writing else "reading ") + repr(real)[:200]
                              + " is not allowed")
    if event in @PATH_WRITE_EVENTS@ or event in @PATH_READ_EVENTS@:
        roots = (@TMP@,) if event in @PATH_WRITE_EVENTS@ else @READ_ROOTS@ + (@TMP@,)
        for a in args[:2]:
            if isinstance(a, int) or a is None:
                continue
            try:
                real = tostr(realpath(tostr(fsdecode(a))))
            except Exception:
                raise PermissionError("sandbox: " + event + " is not allowed") from None
            inside = False
            for r in roots:
                if real == r or real.startswith(r + "/"):
                    inside = True
            if not inside:
                raise PermissionError("sandbox: " + event + " on " + repr(real)[:200] + " is not allowed")


def __sandbox_seccomp(program):
    # The OS layer's system-call filter (built by `isolation.seccomp_program`): no signals to other
    # processes (kill, tgkill, pidfd_send_signal, ...), no new processes, no namespaces or mounts.
    # Prepared once (a worker forks many children); the returned function installs it.
    import ctypes

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    prctl, get_errno, byref = libc.prctl, ctypes.get_errno, ctypes.byref
    prog = Fprog(len(program) // 8, program)

    def install():
        if prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            raise OSError(get_errno(), "prctl(no_new_privs)")
        if prctl(22, 2, byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
            raise OSError(get_errno(), "seccomp filter: " + os.strerror(get_errno()))
    return install


def __sandbox_main():
    import builtins, json, signal, ast, types, string, resource
    # Bound here, not looked up in the globals later (a script can never reach this function's locals).
    (getattr, isinstance, type, str, tuple, repr, len, all, list, dict, int, BaseException, ValueError, TypeError,
     AttributeError, ImportError, SyntaxError, __import__, exec, compile, vars, setattr) = (
        builtins.getattr, builtins.isinstance, builtins.type, builtins.str, builtins.tuple, builtins.repr,
        builtins.len, builtins.all, builtins.list, builtins.dict, builtins.int, builtins.BaseException,
        builtins.ValueError, builtins.TypeError, builtins.AttributeError, builtins.ImportError,
        builtins.SyntaxError, builtins.__import__, builtins.exec, builtins.compile, builtins.vars,
        builtins.setattr)
    runtime = @RUNTIME@
    serve = @SERVE@
    seccomp = @SECCOMP@
    allowed = @ALLOWED@
    out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def write_all(fd, data):
        while data:
            data = data[os.write(fd, data):]

    def emit(payload):
        write_all(out, json.dumps(payload, ensure_ascii=True, allow_nan=False).encode())
        os._exit(0)

    filter_problem = None
    install_filter = None
    if seccomp:
        try:
            install_filter = __sandbox_seccomp(seccomp)
        except BaseException as e:
            filter_problem = e

    def confine():
        # Before any untrusted byte runs in this process: the OS layer's filter, then the hook.
        if seccomp:
            try:
                if filter_problem is not None:
                    raise filter_problem
                install_filter()
            except BaseException as e:
                return "the system-call filter could not be installed: " + (type(e).__name__ + ": " + str(e))[:300]
        if runtime:
            sys.addaudithook(__sandbox_hook)
        return None

    if not serve:
        problem = confine()
        if problem:
            emit({"isolation": problem})

    # From here on, untrusted data exists in the process. A worker (serve) reads the job (code,
    # limits) on its first line, then one request per line; it never runs the script itself: each
    # call runs in a child forked for it, so no state whatever survives from one call to the next.
    if serve:
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

        str_methods = {"format": str.format, "format_map": str.format_map}

        def checked_format(real, name):
            # `real` is str.format / str.format_map, bound to a template or not (reached through a
            # str subclass or `super()` as much as through a literal).
            template = getattr(real, "__self__", None)
            if isinstance(template, str):
                def bound(*a, **k):
                    if not plain(str.__str__(template)):
                        raise ValueError("sandbox: format fields may not read attributes or items")
                    return real(*a, **k)
                return bound

            def unbound(template, *a, **k):
                if not isinstance(template, str) or not plain(str.__str__(template)):
                    raise ValueError("sandbox: format fields may not read attributes or items")
                return real(template, *a, **k)
            return unbound

        def is_str_method(value, name):
            if value is str_methods[name]:
                return True
            return (type(value) is type("".format) and getattr(value, "__name__", None) == name
                    and isinstance(getattr(value, "__self__", None), str))

        def guard(obj, name):
            if name.startswith("_") or name in @DENIED_ATTRIBUTES@:
                raise AttributeError("sandbox: attribute '" + name + "' is not allowed")
            value = getattr(obj, name)
            if name in str_methods and is_str_method(value, name):
                return checked_format(value, name)
            return value

        denied_attributes = @DENIED_ATTRIBUTES@
        type_dict = type.__dict__["__dict__"].__get__
        type_mro = type.__dict__["__mro__"].__get__

        def match_check(cls):
            # `case C(p, q)` reads the attributes that `C.__match_args__` names: the same rules as
            # `subject.name` in code. Only a plain tuple found in the class's own dictionaries is
            # accepted (no metaclass or descriptor that could answer differently when the match reads it).
            if not isinstance(cls, type):
                return cls
            for meta in type_mro(type(cls)):
                if meta is type or meta is object:
                    continue
                names = type_dict(meta)
                if "__match_args__" in names or "__getattribute__" in names or "__getattr__" in names:
                    raise TypeError("sandbox: class patterns with positional parts need a plain class")
            for klass in type_mro(cls):
                names = type_dict(klass)
                if "__match_args__" in names:
                    value = names["__match_args__"]
                    if type(value) is not tuple:
                        raise TypeError("sandbox: __match_args__ must be a plain tuple")
                    for attr in value:
                        if type(attr) is not str or attr.startswith("_") or attr in denied_attributes:
                            raise TypeError("sandbox: the class pattern would read attribute "
                                            + repr(attr)[:60] + ", which is not allowed")
                    break
            return cls

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

        allowed_dunders = @ALLOWED_DUNDER_METHODS@

        def refuse(what):
            raise SyntaxError("sandbox: " + what + " is not allowed")

        def check_chain(node):
            # A dotted name in a pattern (`case json.X`): checked, left as it is (patterns take no calls).
            while isinstance(node, ast.Attribute):
                if node.attr.startswith("_") or node.attr in denied_attributes:
                    refuse("attribute '" + node.attr + "'")
                node = node.value
            if isinstance(node, ast.Name) and node.id.startswith("__"):
                refuse("the name " + repr(node.id))

        class Rewrite(ast.NodeTransformer):
            captured = 0

            def bound(self, name):
                if name is not None and name.startswith("__"):
                    refuse("the name " + repr(name))

            def visit_Name(self, node):
                self.bound(node.id)
                return node

            def visit_arg(self, node):
                self.bound(node.arg)
                return self.generic_visit(node)

            def visit_ExceptHandler(self, node):
                self.bound(node.name)
                return self.generic_visit(node)

            def visit_Global(self, node):
                for name in node.names:
                    self.bound(name)
                return node

            visit_Nonlocal = visit_Global

            def visit_alias(self, node):
                self.bound(node.asname)
                return node

            def visit_FunctionDef(self, node):
                if node.name.startswith("__") and node.name not in allowed_dunders:
                    refuse("defining " + repr(node.name))
                return self.generic_visit(node)

            visit_ClassDef = visit_FunctionDef
            visit_AsyncFunctionDef = visit_FunctionDef

            def visit_MatchAs(self, node):
                self.bound(node.name)
                return self.generic_visit(node)

            def visit_MatchStar(self, node):
                self.bound(node.name)
                return node

            def visit_MatchMapping(self, node):
                self.bound(node.rest)
                return self.generic_visit(node)

            def visit_MatchValue(self, node):
                if isinstance(node.value, ast.Attribute):
                    check_chain(node.value)
                    return node
                return self.generic_visit(node)

            def visit_MatchClass(self, node):
                for attr in node.kwd_attrs:
                    if attr.startswith("_") or attr in denied_attributes:
                        refuse("a class pattern reading attribute '" + attr + "'")
                check_chain(node.cls)
                node.patterns = [self.visit(p) for p in node.patterns]
                node.kwd_patterns = [self.visit(p) for p in node.kwd_patterns]
                return node

            def visit_Match(self, node):
                self.generic_visit(node)
                checks = []
                for case in node.cases:
                    for p in ast.walk(case.pattern):
                        if isinstance(p, ast.MatchClass) and p.patterns:
                            name = "__sandbox_class_" + str(self.captured) + "__"
                            self.captured += 1
                            checks.append(ast.NamedExpr(ast.Name(name, ast.Store()), ast.Call(
                                ast.Name("__sandbox_m__", ast.Load()), [p.cls], [])))
                            p.cls = ast.Name(name, ast.Load())
                if checks:  # classes checked and captured first, then the subject, as one expression
                    node.subject = ast.Subscript(ast.Tuple(checks + [node.subject], ast.Load()),
                                                 ast.UnaryOp(ast.USub(), ast.Constant(1)), ast.Load())
                return node

            def visit_Attribute(self, node):
                if node.attr.startswith("_") or node.attr in denied_attributes:
                    refuse("attribute '" + node.attr + "'")
                self.generic_visit(node)
                if isinstance(node.ctx, ast.Load):
                    return ast.copy_location(ast.Call(ast.Name("__sandbox_g__", ast.Load()),
                                                      [node.value, ast.Constant(node.attr)], []), node)
                return node

        safe = {k: v for k, v in vars(builtins).items()
                if not k.startswith("_") and k not in @DENIED_BUILTINS@}
        safe["__build_class__"] = builtins.__build_class__
        safe["__import__"] = safe_import
        safe["__sandbox_g__"] = guard
        safe["__sandbox_m__"] = match_check

    def fresh_namespace():
        return {"__builtins__": safe, "__name__": "promoted"} if runtime else {"__name__": "promoted"}

    try:
        if runtime:
            tree = Rewrite().visit(ast.parse(job["code"], "promoted.py"))
            code = compile(ast.fix_missing_locations(tree), "promoted.py", "exec")
        else:
            code = compile(job["code"], "promoted.py", "exec")
    except BaseException as e:
        emit({"fatal": (type(e).__name__ + ": " + str(e))[:300]})

    class Timeout(BaseException):
        pass

    def alarm(signum, frame):
        raise Timeout()

    signal.signal(signal.SIGALRM, alarm)

    def answer(solve, inputs):
        signal.setitimer(signal.ITIMER_REAL, job["per_item"])
        try:
            value = solve(dict(inputs))
            signal.setitimer(signal.ITIMER_REAL, 0)
            text = json.dumps(value, ensure_ascii=True, allow_nan=False)
            if len(text) > job["max_output"]:
                return {"error": "output larger than " + str(job["max_output"]) + " characters"}
            return {"output": json.loads(text)}
        except Timeout:
            return {"error": "timeout"}
        except BaseException as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            try:
                message = type(e).__name__ + ": " + str(e)
            except BaseException:
                message = "the script raised an unprintable error"
            return {"error": message[:300]}

    if serve:
        def reply(payload):
            write_all(out, (json.dumps(payload, ensure_ascii=True, allow_nan=False) + "\n").encode())

        for name in allowed:  # imported once here, so that each call's child starts fast
            __import__(name)
        cpu = int(job["per_item"]) + 1

        def read_all(fd, limit):
            data = b""
            while len(data) <= limit:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                data += chunk
            return data

        def spawn():
            # The next call's own process, forked ahead of its request: confined first, then the
            # script's module executed afresh in it; it then waits for its one request.
            request_r, request_w = os.pipe()
            result_r, result_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(request_w)
                    os.close(result_r)
                    os.close(0)
                    os.close(out)
                    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
                    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
                    problem = confine()
                    solve = None
                    if problem:
                        result = {"error": "sandbox isolation unavailable: " + problem}
                    else:
                        namespace = fresh_namespace()
                        try:
                            exec(code, namespace)
                            solve = namespace["solve"]
                        except BaseException as e:
                            result = {"error": ("script failed to load: " + type(e).__name__ + ": " + str(e))[:300]}
                    inputs = json.loads(read_all(request_r, 1 << 40))
                    if solve is not None:
                        result = answer(solve, inputs)
                    write_all(result_w, json.dumps(result, ensure_ascii=True, allow_nan=False).encode())
                finally:
                    os._exit(0)
            os.close(request_r)
            os.close(result_w)
            return pid, request_w, result_r

        spare = spawn()
        reply({"ready": True})
        while True:
            line = requests.readline()
            if not line:
                os._exit(0)
            pid, request_w, result_r = spare
            try:
                write_all(request_w, line)
            except OSError:
                pass  # the call's process is gone: reported below
            os.close(request_w)
            data = read_all(result_r, job["max_output"] + 4096)
            os.close(result_r)
            _, status = os.waitpid(pid, 0)
            try:
                result = json.loads(data)
            except ValueError:
                how = ("signal " + str(os.WTERMSIG(status))) if os.WIFSIGNALED(status) else (
                    "exit " + str(os.waitstatus_to_exitcode(status)))
                result = {"error": "the call's process died (" + how + ")"}
            reply(result)
            spare = spawn()

    namespace = fresh_namespace()
    try:
        exec(code, namespace)
        solve = namespace["solve"]
    except BaseException as e:
        emit({"fatal": (type(e).__name__ + ": " + str(e))[:300]})
    results = []
    timed_out = False
    for inputs in job["inputs"]:
        if timed_out:
            results.append({"error": "skipped: an earlier input timed out"})
            continue
        results.append(answer(solve, inputs))
        timed_out = results[-1] == {"error": "timeout"}
    emit({"results": results})


sys.modules["__main__"].__dict__.pop("__sandbox_main")()
"""


def child_source(*, tmp: str, read_roots: tuple[str, ...], runtime: bool, serve: bool = False,
                 seccomp: bytes = b"") -> str:
    """The child's program with its policy written in as literals (see the module docstring).
    `serve`: a long-lived worker answering one request per line (see `sandbox.worker`).
    `seccomp`: the OS layer's system-call filter, installed before untrusted bytes are read."""
    values = {
        "@SERVE@": repr(serve), "@SECCOMP@": repr(seccomp),
        "@DENIED_SETATTR@": repr(DENIED_SETATTR),
        "@ALLOWED_DUNDER_METHODS@": repr(tuple(sorted(ALLOWED_DUNDER_METHODS))),
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
