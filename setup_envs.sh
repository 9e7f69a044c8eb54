# Environment for run_local.py. Copy, fill in, then `source setup_envs.sh`.
# Never commit real secrets: this template holds placeholders only.

# The agent checkpoint (a Hugging Face model folder with config.json); --agent-model defaults to it.
export CKPT_DIR="${CKPT_DIR:-/path/to/checkpoint}"

# Where Hugging Face caches models and tokenizers (large: put it on a big disk).
export HF_HOME="${HF_HOME:-$HOME/.cache/huggingface}"

# Keys for a hosted user simulator (--user-llm gpt-4o needs OPENAI_API_KEY, claude-* needs
# ANTHROPIC_API_KEY). Not needed when the user simulator is served locally. Left empty here.
export OPENAI_API_KEY="${OPENAI_API_KEY:-}"
export ANTHROPIC_API_KEY="${ANTHROPIC_API_KEY:-}"

# Optional: the checkout of this repository, for scripts that cd into it.
export REPO_PATH="${REPO_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)}"

# Offline by default: litellm uses its bundled model-cost map instead of fetching one.
export LITELLM_LOCAL_MODEL_COST_MAP=True
