# The wheel: `make wheel` builds the sdist and, from it, the wheel into dist/
# as `python -m build` does (CMake tree in build-wheel/cmake); `make
# test-wheel` builds them, checks the sdist's contents and that the wheel is
# self-contained (auditwheel-style readelf checks), checks the one-line
# errors for a missing C compiler or Python headers, installs the wheel with
# the pinned torch into a fresh virtual environment, imports it, round-trips
# tensors and checks that nothing installed names this tree or .venv.
.PHONY: wheel test-wheel
wheel: deps venv
	scripts/check-wheel.sh build

test-wheel: deps venv
	scripts/check-wheel.sh test

EXTRA_TESTS += test-wheel
