"""How much a shapes model uses each word: its v/ε loss on drawn shapes (4 shapes x 2 sizes x 3
places, one noise draw each) at t = 200..800 with the true caption, with the shape word swapped,
with the colour word swapped, and with the empty prompt. A model that draws the asked-for shape
loses clearly more with the shape word swapped. Uses diffusers (the oracle), not our engine.

    python bench/diagnostics/word_sensitivity.py MODEL_FOLDER
"""
import sys, torch, math, numpy as np
from PIL import Image, ImageDraw
from diffusers import AutoencoderKL, UNet2DConditionModel, DDIMScheduler
from transformers import CLIPTextModel, CLIPTokenizer
m=sys.argv[1]
vae=AutoencoderKL.from_pretrained(m,subfolder='vae'); unet=UNet2DConditionModel.from_pretrained(m,subfolder='unet')
te=CLIPTextModel.from_pretrained(m,subfolder='text_encoder'); tok=CLIPTokenizer.from_pretrained(m,subfolder='tokenizer')
sch=DDIMScheduler.from_pretrained(m,subfolder='scheduler'); pred=sch.config.prediction_type
def draw(shape,r,c,bg=(30,60,220),fg=(220,30,30)):
    img=Image.new('RGB',(128,128),bg); d=ImageDraw.Draw(img)
    if shape=='star': d.polygon([(c[0]+(r if i%2==0 else r*0.42)*math.cos(-math.pi/2+i*math.pi/5),c[1]+(r if i%2==0 else r*0.42)*math.sin(-math.pi/2+i*math.pi/5)) for i in range(10)],fill=fg)
    elif shape=='circle': d.ellipse([c[0]-r,c[1]-r,c[0]+r,c[1]+r],fill=fg)
    elif shape=='square': d.rectangle([c[0]-r*0.8,c[1]-r*0.8,c[0]+r*0.8,c[1]+r*0.8],fill=fg)
    else: d.polygon([(c[0],c[1]-r),(c[0]-r,c[1]+r*0.7),(c[0]+r,c[1]+r*0.7)],fill=fg)
    return img
def ctx(s):
    ids=tok([s],padding='max_length',max_length=tok.model_max_length,return_tensors='pt').input_ids
    return te(ids)[0]
shapes=['star','circle','square','triangle']
out={}
with torch.no_grad():
  for t in [200,400,600,800]:
    L={'true':0,'shape':0,'colour':0,'empty':0}; n=0
    for si,sh in enumerate(shapes):
      for r in (22,40):
        for seed in range(3):
          img=draw(sh,r,(45+seed*15,50+si*8))
          x=torch.tensor(np.array(img)).permute(2,0,1)[None].float()/127.5-1
          z=vae.encode(x).latent_dist.mean*vae.config.scaling_factor
          g=torch.Generator().manual_seed(seed); e=torch.randn(z.shape,generator=g)
          a=sch.alphas_cumprod[t]; zt=a.sqrt()*z+(1-a).sqrt()*e
          target = a.sqrt()*e-(1-a).sqrt()*z if pred=='v_prediction' else e
          size='big' if r==40 else 'small'
          other=shapes[(si+1)%4]
          caps={'true':f'a {size} red {sh} on a blue background','shape':f'a {size} red {other} on a blue background','colour':f'a {size} green {sh} on a blue background','empty':''}
          for k,c in caps.items():
            o=unet(zt,t,ctx(c)).sample; L[k]+=((o-target)**2).mean().item()
          n+=1
    out[t]={k:round(v/n,4) for k,v in L.items()}
print(m, out)
