"""The engine: what a network computes and how its gradients flow.

Read `reference.py` first: the maths of every layer, loss and optimiser in a few plain lines
each. The modules beside it are the same maths made fast (tested equal to the reference):
`layers.py`, `conv.py`, `losses.py`, `optim.py`, `model.py` (Sequential), with `plan.py` and
`fused.py` deciding which neighbouring layers run as one. `gradcheck.py` checks any layer's
gradients against finite differences. The engine imports only `barenet.backend` and
`barenet.errors`.
"""
