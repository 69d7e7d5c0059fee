"""FedKSeed (Qin et al., ICML 2024): zeroth-order full-parameter tuning whose messages are
scalars. A pool of K seeds is shared; a client's step draws a seed, perturbs every weight by
`+eps z` and `-eps z` (z regenerated from the seed), and moves the weights by
`-lr g z` with the scalar `g = (L+ - L-) / 2 eps`. It uploads one scalar sum per seed it
drew; the server averages them, and every node rebuilds the global model from the pretrained
weights by replaying `-lr scalar z` round by round, in seed order: the same operations in
the same order, so the same bits on every node and on the server. No gradients and no
optimizer state: a client holds what inference needs, plus one copy of the global weights
to return to after its turn. FedKSeed-Pro (`fedkseed.pro`) draws seeds by the size of their
past scalars.
"""

from fedpress.methods.fedkseed.settings import FedKSeedConfig, check
from fedpress.registry import Lazy, Method, register

METHOD = register(
    Method(
        name="fedkseed",
        about="zeroth-order full-parameter tuning; clients send one scalar per seed (FedKSeed)",
        reads=("fedkseed", "federation"),
        section=("fedkseed", FedKSeedConfig),
        server=Lazy("fedpress.methods.fedkseed.server:build_server"),
        client_task=Lazy("fedpress.methods.fedkseed.replay:build_kseed_task"),
        client={"": Lazy("fedpress.methods.fedkseed.client:train")},
        validate=check,
        plan=Lazy("fedpress.methods.fedkseed.plan:plan"),
    )
)
