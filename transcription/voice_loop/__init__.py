"""The batch path: finals batched after a pause, the receiver's reply spoken back."""
