"""gymnasium CartPole trajectories from a simple controller -> action/state tokens (bins and FAST) -> back,
and a small policy trained on those tokens to continue them, rolled out against the controller.

    python examples/actions_cartpole.py [--episodes 20] [--chunk 50] [--train-steps 300] [--eval-episodes 10]
                                        [--out runs/actions_cartpole]

The controller pushes the cart toward the side the pole leans to (a PD rule on the pole angle). Each
trajectory is a (T, 5) array: the 4 observations and the action. Chunks of `chunk` steps are tokenized
with per-dimension uniform bins over the 1st-99th percentiles (OpenVLA) and decoded; the largest error
inside the fitted ranges is printed against half a bin. The 4 observation streams are also tokenized
with FAST (DCT per chunk, scale and round, BPE fitted on these chunks): tokens per chunk against the
T x 4 numbers it encodes, and the RMS error against FAST's bound.

Then a policy learns to continue the token stream. Each env step is two segments of one vocabulary layout:

    <begin:state> s_0 s_1 s_2 s_3 <end:state> <begin:action> a <end:action>      (9 ids per step)

The state codes are per-dimension bins (dimension d's bin b is code d * state_bins + b, so a code names its
dimension) and the action range holds 2 codes. A tiny LoomModel is trained (AdamW, next-token loss) on the
windows of `window` steps that end at each step of the controller's trajectories. At each env step the policy
feeds the window that ends with the current state and generates the action greedily: one forward pass per
action (the layout forces the begin and end tokens), batched over the episodes still running. Its mean
episode length on CartPole-v1 (at most 500 steps) is set against the controller's and a uniformly random
policy's, on the same seeds (which the training rollouts did not use).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tokenloom.generators import LoomModel, ModalityVocab, PackedSequence, VocabularyLayout, generate
from tokenloom.generators.training import train_in_memory
from tokenloom.tokenizers.actions_bins import ActionBins
from tokenloom.tokenizers.actions_fast import FASTTokenizer

STATE_DIM = 4
ACTION_IDS = 3  # <begin:action> 1 code <end:action>
STEP_IDS = STATE_DIM + 2 + ACTION_IDS  # <begin:state> 4 codes <end:state>, then the action
EVAL_SEED = 1000  # evaluation episodes start here, clear of the training rollouts' seeds 0..episodes-1

# Policy: (episode indices, observations_NA of those episodes) -> actions_N (0 or 1)
Policy = Callable[[list[int], np.ndarray], np.ndarray]


def controller(observation: np.ndarray) -> int:
    _, _, angle, angular_velocity = observation
    return int(angle + 0.5 * angular_velocity > 0)


def rollouts(episodes: int, seed: int = 0) -> list[np.ndarray]:
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    trajectories = []
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        steps, done = [], False
        while not done:
            action = controller(observation)
            steps.append(np.append(observation, action))
            observation, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
        trajectories.append(np.asarray(steps, dtype=np.float64))
    env.close()
    return trajectories


def chunks(trajectories: list[np.ndarray], length: int) -> np.ndarray:
    out = [t[i : i + length] for t in trajectories for i in range(0, len(t) - length + 1, length)]
    return np.stack(out)


# -- the policy's tokens ---------------------------------------------------------------------------
def policy_layout(state_bins: ActionBins) -> VocabularyLayout:
    """A "state" range of STATE_DIM x num_bins codes (4 per segment) and an "action" range of 2 (1 per segment)."""
    tokenizer = {"registry_key": "action/bins", "config": state_bins.config}
    state = ModalityVocab("state", STATE_DIM * state_bins.num_bins, tokens_per_segment=STATE_DIM, tokenizer=tokenizer)
    return VocabularyLayout([state, ModalityVocab("action", 2, tokens_per_segment=1)])


def state_codes(state_bins: ActionBins, observations_NA: np.ndarray) -> np.ndarray:
    """(N, 4) observations -> (N, 4) local state codes, dimension d's bins at d * num_bins."""
    ids_NA = state_bins.tokenize(np.asarray(observations_NA, dtype=np.float32)).numpy()
    return ids_NA + np.arange(STATE_DIM) * state_bins.num_bins


def trajectory_ids(layout: VocabularyLayout, state_bins: ActionBins, trajectory_T5: np.ndarray) -> np.ndarray:
    """One trajectory packed step after step, without BOS/EOS: (9 T,) shared-vocabulary ids."""
    codes_TA = state_codes(state_bins, trajectory_T5[:, :STATE_DIM])
    actions_T = trajectory_T5[:, STATE_DIM].astype(np.int64)
    record = []
    for codes_A, action in zip(codes_TA, actions_T):
        record += [("state", codes_A), ("action", [action])]
    return layout.pack(record, add_bos=False, add_eos=False).ids_L


def training_windows(layout: VocabularyLayout, ids_L: np.ndarray, window: int) -> list[PackedSequence]:
    """BOS + the last `window` steps ending at each step (fewer at the start of the episode)."""
    out = []
    for end in range(STEP_IDS, len(ids_L) + 1, STEP_IDS):
        ids = np.concatenate([[layout.bos_id], ids_L[max(0, end - window * STEP_IDS) : end]])
        out.append(PackedSequence(ids, layout.modality_of_id[ids]))
    return out


def train_policy(
    model: LoomModel, windows: list[PackedSequence], steps: int, batch_size: int, learning_rate: float, seed: int
) -> list[float]:
    """AdamW on random batches of windows, linear warmup then cosine decay; returns the losses."""
    rng = np.random.default_rng(seed)
    return train_in_memory(model, lambda step: [windows[i] for i in rng.integers(len(windows), size=batch_size)],
                           steps, learning_rate=learning_rate, warmup_steps=max(1, steps // 10), min_lr_ratio=0.0)


class TokenPolicy:
    """The trained model as a policy: it keeps each episode's recent ids and generates the next action."""

    def __init__(self, model: LoomModel, state_bins: ActionBins, window: int) -> None:
        self.model, self.state_bins, self.window = model.eval(), state_bins, window
        self.layout = model.layout
        self.action_offset = self.layout.range("action")[0]
        self.history: dict[int, np.ndarray] = {}
        self.forward_passes = 0
        self.decisions = 0  # generate calls: one per env step of the running episodes

    def __call__(self, episodes: list[int], observations_NA: np.ndarray) -> np.ndarray:
        prompts = []
        for episode, codes_A in zip(episodes, state_codes(self.state_bins, observations_NA)):
            state_ids = self.layout.pack([("state", codes_A)], add_bos=False, add_eos=False).ids_L
            recent = np.concatenate([self.history.get(episode, np.zeros(0, np.int64)), state_ids])
            self.history[episode] = recent = recent[-(self.window * STEP_IDS - ACTION_IDS) :]  # whole steps + this state
            prompts.append(np.concatenate([[self.layout.bos_id], recent]))
        out = generate(self.model, prompts, segments=[("action", 1)])  # greedy, KV cache
        action_ids_N3 = out.new_ids_BL[:, :ACTION_IDS].numpy()  # <begin:action> code <end:action> (then EOS)
        for episode, ids in zip(episodes, action_ids_N3):
            self.history[episode] = np.concatenate([self.history[episode], ids])
        self.forward_passes += out.forward_passes
        self.decisions += 1
        return action_ids_N3[:, 1] - self.action_offset


def controller_policy(episodes: list[int], observations_NA: np.ndarray) -> np.ndarray:
    return np.array([controller(o) for o in observations_NA])


def random_policy(seed: int) -> Policy:
    rng = np.random.default_rng(seed)
    return lambda episodes, observations_NA: rng.integers(0, 2, size=len(episodes))


def episode_lengths(policy: Policy, episodes: int, seed: int) -> np.ndarray:
    """Run `episodes` CartPole-v1 episodes side by side (seeds seed, seed + 1, ...); steps each lasted."""
    import gymnasium as gym

    envs = [gym.make("CartPole-v1") for _ in range(episodes)]
    observations = [env.reset(seed=seed + e)[0] for e, env in enumerate(envs)]
    lengths = np.zeros(episodes, dtype=np.int64)
    running = list(range(episodes))
    while running:
        actions = policy(running, np.stack([observations[e] for e in running]))
        still_running = []
        for e, action in zip(running, actions):
            observations[e], _, terminated, truncated, _ = envs[e].step(int(action))
            lengths[e] += 1
            if not (terminated or truncated):
                still_running.append(e)
        running = still_running
    for env in envs:
        env.close()
    return lengths


def tiny_model(layout: VocabularyLayout, window: int, seed: int) -> LoomModel:
    """A 2-layer, 64-wide llama backbone (about 0.1 M parameters) over the layout."""
    torch.manual_seed(seed)
    return LoomModel(layout, {
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": window * STEP_IDS + 1,
    })


def policy_figures(trajectories: list[np.ndarray], args: argparse.Namespace) -> dict[str, object]:
    """Fit the state bins, train the tiny model on the trajectories' windows, roll out the three policies."""
    state_bins = ActionBins(action_dim=STATE_DIM, num_bins=args.state_bins)
    state_bins.fit(np.concatenate(trajectories)[:, :STATE_DIM])
    layout = policy_layout(state_bins)
    windows = []
    for trajectory in trajectories:
        windows += training_windows(layout, trajectory_ids(layout, state_bins, trajectory), args.window)
    model = tiny_model(layout, args.window, args.seed)
    start = time.perf_counter()
    losses = train_policy(model, windows, args.train_steps, args.batch_size, args.learning_rate, args.seed)
    training_seconds = time.perf_counter() - start
    policy = TokenPolicy(model, state_bins, args.window)
    agreement: list[bool] = []

    def policy_watched(episodes: list[int], observations_NA: np.ndarray) -> np.ndarray:
        actions_N = policy(episodes, observations_NA)
        agreement.extend(actions_N == controller_policy(episodes, observations_NA))
        return actions_N

    start = time.perf_counter()
    policy_lengths = episode_lengths(policy_watched, args.eval_episodes, EVAL_SEED)
    rollout_seconds = time.perf_counter() - start
    controller_lengths = episode_lengths(controller_policy, args.eval_episodes, EVAL_SEED)
    random_lengths = episode_lengths(random_policy(args.seed), args.eval_episodes, EVAL_SEED)
    return {
        "policy_mean_episode_length": float(policy_lengths.mean()),
        "controller_mean_episode_length": float(controller_lengths.mean()),
        "random_mean_episode_length": float(random_lengths.mean()),
        "eval_episodes": args.eval_episodes,
        "policy_controller_agreement": round(float(np.mean(agreement)), 4),  # on the states the policy visits
        "policy_forward_passes_per_action": policy.forward_passes / max(policy.decisions, 1),
        "policy_parameters": sum(p.numel() for p in model.parameters()),
        "policy_training_windows": len(windows),
        "policy_final_loss": round(float(np.mean(losses[-10:])), 4),
        "policy_training_seconds": round(training_seconds, 2),
        "policy_rollout_seconds": round(rollout_seconds, 2),
    }


# -- the script ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20, help="controller episodes to tokenize and train on")
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--window", type=int, default=8, help="steps the policy sees (the current one included)")
    parser.add_argument("--state-bins", type=int, default=32, help="bins per observation dimension for the policy")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--eval-episodes", type=int, default=10, help="episodes per policy (seeds 1000, 1001, ...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/actions_cartpole")
    return parser.parse_args(argv)


def tokenizer_figures(trajectories: list[np.ndarray], chunk: int) -> dict[str, object]:
    """Bins on (chunk, 5) chunks and FAST on their 4 observation streams: round trips and token counts."""
    chunks_BTA = chunks(trajectories, chunk)
    bins = ActionBins(action_dim=chunks_BTA.shape[-1])
    bins.fit(chunks_BTA.reshape(-1, chunks_BTA.shape[-1]))
    ids = bins.tokenize(chunks_BTA)
    decoded = np.asarray(bins.decode_tokens(ids))
    low, high = bins.low_A.numpy(), bins.high_A.numpy()
    inside = (chunks_BTA >= low) & (chunks_BTA <= high)
    error = float(np.abs(decoded - chunks_BTA)[inside].max() / ((high - low) / bins.num_bins).max())
    states_BTA = chunks_BTA[..., :STATE_DIM]
    fast = FASTTokenizer(action_dim=STATE_DIM, chunk_length=chunk, scale=10.0).fit(states_BTA, vocab_size=512)
    fast_ids = fast.tokenize(states_BTA)
    restored = fast.decode_tokens(fast_ids).numpy()
    clipped = fast.clip(states_BTA).numpy()
    rms_A = np.sqrt(((restored - clipped) ** 2).mean(axis=(0, 1)))
    _, rms_bound_A = fast.error_bound()
    return {
        "chunks": len(chunks_BTA), "bins_tokens_per_chunk": int(np.asarray(ids[0]).size),
        "bins_max_error_in_bins": round(error, 4),
        "fast_tokens_per_chunk": round(float(np.mean([len(i) for i in fast_ids])), 1),
        "fast_numbers_per_chunk": int(chunk * STATE_DIM),
        "fast_rms_within_bound": bool((rms_A <= rms_bound_A.numpy() + 1e-6).all()),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trajectories = rollouts(args.episodes)
    results: dict[str, object] = {
        "episodes": args.episodes, "mean_episode_length": float(np.mean([len(t) for t in trajectories])),
    }
    results.update(tokenizer_figures(trajectories, args.chunk))
    print(f"{args.episodes} episodes, mean length {results['mean_episode_length']:.1f} steps -> {results['chunks']} "
          f"chunks of {args.chunk}x5; bins: {results['bins_tokens_per_chunk']} tokens per chunk, "
          f"max error {results['bins_max_error_in_bins']:.3f} bin widths (<= 0.5 inside the fitted ranges); FAST: "
          f"{results['fast_tokens_per_chunk']} tokens per chunk for {results['fast_numbers_per_chunk']} numbers, "
          f"RMS error within bound: {results['fast_rms_within_bound']}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: OpenMP's thread sync would cost more than the matmuls it splits
    try:
        results.update(policy_figures(trajectories, args))
    finally:
        torch.set_num_threads(threads)
    print(f"policy ({results['policy_parameters']} parameters, {args.train_steps} steps in "
          f"{results['policy_training_seconds']:.1f} s, loss {results['policy_final_loss']}): mean episode length "
          f"{results['policy_mean_episode_length']:.1f} over {args.eval_episodes} episodes; controller "
          f"{results['controller_mean_episode_length']:.1f}, random {results['random_mean_episode_length']:.1f}; "
          f"{results['policy_forward_passes_per_action']:.1f} forward pass per action")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
