"""The example player's build: run with `treeseed build [-Denable-mp3=false]`."""


def build(b):
    mp3 = b.option("enable-mp3", bool, "MP3 decoding via lame", default=True)
    z = b.dependency("zlib")
    cmd = ["cc", "-o", "player", "main.c", f"-I{z}/include"]
    if mp3:
        lame = b.lazy_dependency("lame")  # None on the first pass: treeseed fetches it, reruns
        if lame is not None:
            cmd += [f"-I{lame}/include", "-DHAVE_MP3"]
    b.step("player", cmd, default=True)
    b.step("run", ["./player"], depends_on=["player"])
