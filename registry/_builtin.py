"""The built-in predictors, reward models and agents: one line each, resolved only when made."""

from __future__ import annotations

from ._registry import register

# --- predictors -----------------------------------------------------------------------------------------
register("predictors", "baseline.nochange", "cellgym.predictors.baselines:NoChangeBaseline",
         "No change: every perturbed cell keeps its control expression (control mean).")
register("predictors", "baseline.mean", "cellgym.predictors.baselines:MeanBaseline",
         "Control plus the mean effect of all training perturbations, per context.")
register("predictors", "baseline.additive", "cellgym.predictors.baselines:AdditiveBaseline",
         "Control plus the sum of the single-perturbation effects (for combinations).")
register("predictors", "baseline.linear", "cellgym.predictors.baselines:LinearBaseline",
         "Linear model of Ahlmann-Eltze, Huber & Anders 2025: PCA gene embedding, ridge on both sides.")
register("predictors", "state.transition", "cellgym.predictors.state:StateTransition",
         "State set transformer (Adduri et al. 2025): control-cell set + perturbation -> perturbed set, energy-distance loss.")
register("predictors", "state.embedding", "cellgym.predictors.state:StateEmbedding",
         "State cell embedding (SE): cells as sentences of top genes, gene-embedding tokens, obsm['X_state'].")
register("predictors", "grn.boolean", "cellgym.predictors.grn:BooleanPredictor",
         "Ground-truth Boolean gene-network simulator (default: Krumsiek 2011 myeloid model), Boolean or BoolODE dynamics.")
register("predictors", "grn.sergio", "cellgym.predictors.grn:SergioPredictor",
         "Ground-truth SERGIO-style stochastic gene-network simulator with technical noise (counts).")
register("predictors", "gem1.bulk", "cellgym.predictors.gem1:Gem1Bulk",
         "GEM-1 metadata-conditioned VAE for log-CPM (bulk-like) data, Gaussian or multinomial decoder.")
register("predictors", "gem1.nb", "cellgym.predictors.gem1:Gem1NB",
         "GEM-1 metadata-conditioned VAE with a negative-binomial decoder (counts).")
register("predictors", "gem1.sc", "cellgym.predictors.gem1:Gem1SC",
         "GEM-1 single-cell VAE: per-cell library size, NB training, multinomial sampling.")
register("predictors", "galaxy", "cellgym.predictors.galaxy:GalaxyPredictor",
         "Galaxy/SATURN cross-species model: macrogenes from gene embeddings, X_galaxy, perturbation transfer.")
register("predictors", "ensemble", "cellgym.predictors.ensemble:EnsemblePredictor",
         "K members (bootstrap or seeds, any families): member mean, per-cell disagreement, energy distance between members.")
register("predictors", "cellgen", "cellgym.predictors.cellgen:CellGen",
         "CellGen FiLM-conditioned gated-attention WGAN: edits the input cell, no cell-type input; time-step forecasts.")

# --- reward models --------------------------------------------------------------------------------------
register("rewards", "target.energy", "cellgym.predictors.rewards:EnergyDistanceReward",
         "Energy distance between the population and target cells.")
register("rewards", "target.centroid", "cellgym.predictors.rewards:CentroidReward",
         "Euclidean or cosine distance between the population centroid and the target centroid.")
register("rewards", "target.classifier", "cellgym.predictors.rewards:ClassifierReward",
         "1 - mean probability of the target label under a classifier fitted on labelled cells.")
register("rewards", "state.embedding", "cellgym.predictors.state:StateEmbeddingReward",
         "Energy distance of the population to the goal cells in a State SE embedding space.")
register("rewards", "gem1.classifier", "cellgym.predictors.gem1:Gem1ClassifierReward",
         "1 - mean probability of the goal label under a GEM-1 model's biological latent classifier.")
register("rewards", "galaxy.embedding", "cellgym.predictors.galaxy:GalaxyEmbeddingReward",
         "Centroid distance to goal cells (any species) in a galaxy model's shared X_galaxy space.")
register("rewards", "uncertainty.penalised", "cellgym.predictors.rewards:UncertaintyPenalisedReward",
         "A goal reward minus lambda x the ensemble's member disagreement of each predicted step.")
register("rewards", "cellgen.critic", "cellgym.predictors.cellgen:CellGenCriticReward",
         "How far below real cells a CellGen critic scores the population (realism penalty).")

# --- agents ---------------------------------------------------------------------------------------------
register("agents", "random", "cellgym.agents.planning:RandomAgent",
         "Uniform random valid action (non-learning baseline).")
register("agents", "greedy", "cellgym.agents.planning:GreedyAgent",
         "One-step lookahead through the transition: the action that most reduces the distance.")
register("agents", "bfs", "cellgym.agents.planning:BFSAgent",
         "Exact shortest perturbation sequence by breadth-first search (small deterministic worlds).")
register("agents", "ppo", "cellgym.agents.zoo:SB3Agent",
         "PPO (stable-baselines3), hyperparameters per task in agents/hyperparams/ppo.yml.", algo="ppo")
register("agents", "a2c", "cellgym.agents.zoo:SB3Agent",
         "A2C (stable-baselines3), hyperparameters per task in agents/hyperparams/a2c.yml.", algo="a2c")
register("agents", "dqn", "cellgym.agents.zoo:SB3Agent",
         "DQN (stable-baselines3), discrete actions; agents/hyperparams/dqn.yml.", algo="dqn")
register("agents", "sac", "cellgym.agents.zoo:SB3Agent",
         "SAC (stable-baselines3), continuous actions; agents/hyperparams/sac.yml.", algo="sac")
register("agents", "td3", "cellgym.agents.zoo:SB3Agent",
         "TD3 (stable-baselines3), continuous actions; agents/hyperparams/td3.yml.", algo="td3")
register("agents", "maskable_ppo", "cellgym.agents.zoo:SB3Agent",
         "MaskablePPO (sb3-contrib): PPO that never picks a masked action (uses action_masks()).",
         algo="maskable_ppo")
register("agents", "celltrip", "cellgym.agents.celltrip:CellTripAgent",
         "CellTRIP attention PPO: every cell an agent (PettingZoo CellEnv-Trip-* worlds), PopArt, adaptive rescaling.")
