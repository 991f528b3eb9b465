#!/usr/bin/env python3
"""Proves /dev/kvm runs a guest: a real-mode guest does `out 0x10, 42; hlt`.

Exits 0 and prints "kvm ok: ..." when KVM_RUN reports that port write and then the halt.
Used by tests/testhost/selftest inside the test host (nested SVM under qemu TCG).
"""
import ctypes
import fcntl
import mmap
import os
import struct
import sys
import time

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_RUN = 0xAE80
KVM_GET_REGS, KVM_SET_REGS = 0x8090AE81, 0x4090AE82
KVM_GET_SREGS, KVM_SET_SREGS = 0x8138AE83, 0x4138AE84
KVM_EXIT_IO, KVM_EXIT_HLT = 2, 5
CODE = bytes([0xB0, 42, 0xE6, 0x10, 0xF4])  # mov al, 42; out 0x10, al; hlt

libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


def ioctl(fd, req, arg=None):
    ret = libc.ioctl(fd, req, arg)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ioctl {req:#x}: {os.strerror(err)}")
    return ret


def main():
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    if ioctl(kvm, KVM_GET_API_VERSION) != 12:
        sys.exit("kvm: unexpected API version")
    vm = ioctl(kvm, KVM_CREATE_VM, 0)
    mem = mmap.mmap(-1, 0x1000)
    mem[0:len(CODE)] = CODE
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    region = struct.pack("IIQQQ", 0, 0, 0, 0x1000, addr)  # slot, flags, gpa, size, hva
    ioctl(vm, KVM_SET_USER_MEMORY_REGION, ctypes.c_char_p(region))
    vcpu = ioctl(vm, KVM_CREATE_VCPU, 0)
    run = mmap.mmap(vcpu, ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE), mmap.MAP_SHARED)

    sregs = ctypes.create_string_buffer(312)
    ioctl(vcpu, KVM_GET_SREGS, sregs)
    struct.pack_into("Q", sregs, 0, 0)  # cs.base
    struct.pack_into("H", sregs, 12, 0)  # cs.selector
    ioctl(vcpu, KVM_SET_SREGS, sregs)
    regs = ctypes.create_string_buffer(144)
    struct.pack_into("QQ", regs, 128, 0, 2)  # rip, rflags
    ioctl(vcpu, KVM_SET_REGS, regs)

    start = time.monotonic()
    ioctl(vcpu, KVM_RUN, 0)
    reason, = struct.unpack_from("I", run, 8)
    direction, size, port, count, offset = struct.unpack_from("BBHIQ", run, 32)
    if reason != KVM_EXIT_IO or direction != 1 or port != 0x10 or run[offset] != 42:
        sys.exit(f"kvm: expected the guest's port write, got exit {reason}")
    ioctl(vcpu, KVM_RUN, 0)
    reason, = struct.unpack_from("I", run, 8)
    if reason != KVM_EXIT_HLT:
        sys.exit(f"kvm: expected hlt, got exit {reason}")
    ms = (time.monotonic() - start) * 1000
    print(f"kvm ok: guest wrote 42 to port 0x10 and halted ({ms:.1f} ms)")


if __name__ == "__main__":
    main()
