"""Deep reinforcement learning: DQN with experience replay, REINFORCE and the Recurrent Attention Model."""
