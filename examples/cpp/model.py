"""The example model, in Python: an MLP and a small pre-LayerNorm transformer
block. examples/cpp/deploy.cpp writes the same architecture with torch::nn;
the parameter names (state_dict keys) are what ties the two together."""
import math

import torch
from torch import nn
import torch.nn.functional as F

D_IN, D_MODEL, HEADS, D_FF, D_OUT = 16, 32, 4, 64, 8


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(D_MODEL)
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        self.ln2 = nn.LayerNorm(D_MODEL)
        self.fc1 = nn.Linear(D_MODEL, D_FF)
        self.fc2 = nn.Linear(D_FF, D_MODEL)

    def forward(self, x):
        b, t, d = x.shape
        hd = d // HEADS
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q = q.reshape(b, t, HEADS, hd).transpose(1, 2)
        k = k.reshape(b, t, HEADS, hd).transpose(1, 2)
        v = v.reshape(b, t, HEADS, hd).transpose(1, 2)
        att = q.matmul(k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = att.softmax(-1)
        y = att.matmul(v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class MLP(nn.Module):
    def __init__(self, d_in, d_hidden, d_out):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = MLP(D_IN, D_MODEL, D_MODEL)
        self.block = Block()
        self.head = nn.Linear(D_MODEL, D_OUT)
        self.register_buffer("out_scale", torch.full((D_OUT,), 0.5))

    def forward(self, x):
        return self.head(self.block(self.embed(x))) * self.out_scale
