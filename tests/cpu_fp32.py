"""Engine settings of the tests that compare numbers: the CPU in fp32 whatever the machine
(`engine.dtype=auto` would pick bf16 on a CPU with native bf16). No tests here."""

CPU_FP32 = {"device": "cpu", "dtype": "float32"}
