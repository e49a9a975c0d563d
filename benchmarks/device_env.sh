# Sourced by the lent-GPU scripts (device_lease.sh, device_speed.sh) after `T0=$(date +%s)`:
# logs to "$OUT/$1" as well as the terminal, installs the wheels carried in .whl/ (pydantic &
# co., which that machine's image lacks), puts src/ on the path and prints the machine.
mkdir -p "$OUT"
exec > >(tee -a "$OUT/$1") 2>&1
elapsed() { echo $(( $(date +%s) - T0 )); }
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__)"
nproc
