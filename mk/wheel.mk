# The wheel: `make wheel` builds dist/torch_safetensors-*.whl as `pip wheel .`
# does (CMake tree in build-wheel/cmake); `make test-wheel` builds it, checks
# it is self-contained (auditwheel-style readelf checks), installs it with the
# pinned torch into a fresh virtual environment, imports it, round-trips
# tensors and checks that nothing installed names this tree or .venv.
.PHONY: wheel test-wheel
wheel: deps venv
	scripts/check-wheel.sh build

test-wheel: deps venv
	scripts/check-wheel.sh test

EXTRA_TESTS += test-wheel
