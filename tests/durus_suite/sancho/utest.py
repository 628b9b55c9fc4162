"""A stand-in for sancho.utest: UTest classes are collected by the runner, not run on creation."""


class UTest:
    def _pre(self):
        pass

    def _post(self):
        pass


def raises(exception, function, *args, **kwargs):
    try:
        function(*args, **kwargs)
    except exception as error:
        return error
    raise AssertionError(f"{function!r} did not raise {exception!r}")
