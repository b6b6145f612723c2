"Stand-in for the one colossalai import that ColossalChat's `coati.dataset` needs on a CPU (tests and notebooks only)."
