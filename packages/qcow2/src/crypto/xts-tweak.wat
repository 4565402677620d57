;; XTS tweak pass (xts-tweak.ts embeds this module, assembled with wabt's wat2wasm).
;; xor_tweaks(t0, data, sectors): for each 512-byte sector s at data + 512 s, the 32 blocks are
;; XORed with T, T*x, T*x^2 ... where T is the 16 bytes at t0 + 16 s (E_K2(IV)), multiplication
;; in GF(2^128) on the little-endian 128-bit value, as IEEE 1619 defines it.
(module
  (memory (export "memory") 1)
  (func (export "xor_tweaks") (param $t0 i32) (param $data i32) (param $sectors i32)
    (local $lo i64) (local $hi i64) (local $end i32) (local $stop i32) (local $carry i64)
    (local.set $end (i32.add (local.get $data) (i32.shl (local.get $sectors) (i32.const 9))))
    (block $done
      (loop $sector
        (br_if $done (i32.ge_u (local.get $data) (local.get $end)))
        (local.set $lo (i64.load (local.get $t0)))
        (local.set $hi (i64.load offset=8 (local.get $t0)))
        (local.set $stop (i32.add (local.get $data) (i32.const 512)))
        (loop $block
          (i64.store (local.get $data) (i64.xor (i64.load (local.get $data)) (local.get $lo)))
          (i64.store offset=8 (local.get $data) (i64.xor (i64.load offset=8 (local.get $data)) (local.get $hi)))
          (local.set $carry (i64.shr_u (local.get $hi) (i64.const 63)))
          (local.set $hi (i64.or (i64.shl (local.get $hi) (i64.const 1)) (i64.shr_u (local.get $lo) (i64.const 63))))
          (local.set $lo (i64.xor (i64.shl (local.get $lo) (i64.const 1)) (i64.mul (local.get $carry) (i64.const 0x87))))
          (local.set $data (i32.add (local.get $data) (i32.const 16)))
          (br_if $block (i32.lt_u (local.get $data) (local.get $stop))))
        (local.set $t0 (i32.add (local.get $t0) (i32.const 16)))
        (br $sector)))))
