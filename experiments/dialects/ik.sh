llama-quantize --imatrix imatrix.dat --pure \
  --custom-q "blk\.(0|1|2|3)\.ffn_down_exps=q6_k,ffn_down_exps=iq4_xs,ffn_(up|gate)_exps=iq3_s" \
  --custom-q "\.(attn|ssm)_.*=q8_0,token_embd=q4_k" \
  Qwen3.5-35B-A3B-BF16.gguf out.gguf Q6_K 16
