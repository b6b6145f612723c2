# Shared by the example scripts: choose devices and launch with torchrun.
# GPU machine: the N GPUs with the least memory in use (by nvidia-smi), one process each.
# Several machines: set NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT) on every node.
# No GPU: two CPU processes with gloo and the bundled tiny setting (TINY=1), so the scripts run anywhere.

# the project's venv (made by `make install`) comes first when it exists
_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ -d "$_here/../.venv/bin" ] && PATH="$_here/../.venv/bin:$PATH"

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

pick_least_used_gpus() {   # usage: pick_least_used_gpus N  -> exports CUDA_VISIBLE_DEVICES
    local n=$1
    local ids
    ids=$(nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits \
          | sort -t, -k2 -n | head -n "$n" | cut -d, -f1 | tr -d ' ' | paste -sd, -)
    export CUDA_VISIBLE_DEVICES=$ids
    echo "using GPUs $CUDA_VISIBLE_DEVICES (least memory in use)"
}

launch() {                  # usage: launch CONSOLE_SCRIPT ARGS...
    local script=$1; shift
    local bin
    bin=$(command -v "$script") || { echo "$script not found: pip install the package (make install) first" >&2; exit 1; }
    if has_gpu && [ "${TINY:-0}" != 1 ]; then
        NPROC=${NPROC:-$(nvidia-smi -L | wc -l)}
        pick_least_used_gpus "$NPROC"
    else
        NPROC=${NPROC:-2}
        echo "CPU: $NPROC processes (gloo) with the bundled tiny setting"
    fi
    local nodes=(--standalone)
    if [ "${NNODES:-1}" -gt 1 ]; then
        nodes=(--nnodes "$NNODES" --node_rank "${NODE_RANK:?set NODE_RANK}" --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" --master_port "${MASTER_PORT:-29500}")
    fi
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} torchrun "${nodes[@]}" --nproc_per_node "$NPROC" "$bin" "$@"
}
