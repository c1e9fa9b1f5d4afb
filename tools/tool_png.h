/* tools/tool_png.h - a moexc_canvas to a PNG file, written the way every
   program here writes its files: to "<path>.tmp", then moved over <path>
   (moexc_replace_file), so that a crash, a kill or a full disk never leaves
   half a picture under the final name. Include after moexc.h and
   <stb_image_write.h> (whose implementation one file of the program
   defines). */
#ifndef MOEXC_TOOL_PNG_H
#define MOEXC_TOOL_PNG_H
#include <stdio.h>
#include <string.h>

/* 0 when <path> holds the picture; 1 after saying on stderr, after
   "<program>: ", what could not be written (a failed write leaves no .tmp). */
static int tool_write_png(const char *program, const char *path, const moexc_canvas *c)
{
    char tmp[4200];
    moexc_error err;
    if (strlen(path) + sizeof(".tmp") > sizeof(tmp)) {
        fprintf(stderr, "%s: cannot write %s: the path is too long\n", program, path);
        return 1;
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if (!stbi_write_png(tmp, c->width, c->height, 3, c->rgb, c->width * 3)) {
        remove(tmp);
        fprintf(stderr, "%s: cannot write %s\n", program, tmp);
        return 1;
    }
    if (moexc_replace_file(tmp, path, &err) != MOEXC_OK) {
        remove(tmp);
        fprintf(stderr, "%s: %s\n", program, err.message);
        return 1;
    }
    return 0;
}
#endif
