pragma circom 2.0.0;

// The smallest useful circuit: proves knowledge of two factors of c.
template Multiplier() {
    signal input a;
    signal input b;
    signal output c;
    c <== a * b;
}

component main = Multiplier();
