# Builds a program of tests/tools against the libraries of an FFmpeg build
# folder, with that build's flags and libraries:
#   make -C BUILD -f link.mak PROG_SRC=file.c PROG=out
include ffbuild/config.mak

FFLIBS := avfilter avformat avcodec swscale swresample avutil

$(PROG): $(PROG_SRC) $(foreach l,$(FFLIBS),lib$(l)/lib$(l).a)
	$(CC) $(CPPFLAGS) $(CFLAGS) -I. -I$(SRC_PATH) -c -o $@.o $<
	$(LD) $(LDFLAGS) $(LDEXEFLAGS) -o $@ $@.o $(foreach l,$(FFLIBS),lib$(l)/lib$(l).a) \
	    $(foreach l,$(FFLIBS),$(EXTRALIBS-$(l))) $(EXTRALIBS)
	rm -f $@.o
