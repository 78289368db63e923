/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Accesses to map values that other CPUs write at the same time. A plain
 * access may be merged, repeated or torn by the compiler; these are not.
 * The atomics (__sync_*) are full barriers in BPF (BPF_ATOMIC with
 * BPF_FETCH; clang -mcpu=v3).
 */
#ifndef WEIR_COMPILER_H
#define WEIR_COMPILER_H

#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))

#endif
