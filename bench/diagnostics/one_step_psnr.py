"""One-step image estimates of a shapes model: drawn shapes are encoded, noised to t, denoised in
one UNet call and decoded; prints the PSNR against the VAE round trip at each t (the denoiser's
quality apart from the VAE). Uses diffusers (the oracle), not our engine.

    python bench/diagnostics/one_step_psnr.py MODEL_FOLDER
"""
import sys, torch, math, numpy as np, json
from PIL import Image, ImageDraw
from diffusers import AutoencoderKL, UNet2DConditionModel, DDIMScheduler
from transformers import CLIPTextModel, CLIPTokenizer
m=sys.argv[1]
vae=AutoencoderKL.from_pretrained(m,subfolder='vae'); unet=UNet2DConditionModel.from_pretrained(m,subfolder='unet')
te=CLIPTextModel.from_pretrained(m,subfolder='text_encoder'); tok=CLIPTokenizer.from_pretrained(m,subfolder='tokenizer')
sch=DDIMScheduler.from_pretrained(m,subfolder='scheduler'); pred=sch.config.prediction_type
def star(d,c,r): 
    d.polygon([(c[0]+(r if i%2==0 else r*0.42)*math.cos(-math.pi/2+i*math.pi/5),c[1]+(r if i%2==0 else r*0.42)*math.sin(-math.pi/2+i*math.pi/5)) for i in range(10)],fill=(220,30,30))
cases=[]
for k,(shape,bg) in enumerate([('star',(30,60,220)),('circle',(240,240,240)),('square',(20,20,20)),('triangle',(30,160,60))]):
    for r in (20,40):
        img=Image.new('RGB',(128,128),bg); d=ImageDraw.Draw(img); c=(50+k*8,60+k*5)
        if shape=='star': star(d,c,r)
        elif shape=='circle': d.ellipse([c[0]-r,c[1]-r,c[0]+r,c[1]+r],fill=(220,30,30))
        elif shape=='square': d.rectangle([c[0]-r*0.8,c[1]-r*0.8,c[0]+r*0.8,c[1]+r*0.8],fill=(220,30,30))
        else: d.polygon([(c[0],c[1]-r),(c[0]-r,c[1]+r*0.7),(c[0]+r,c[1]+r*0.7)],fill=(220,30,30))
        cases.append((img, f"a {'big' if r==40 else 'small'} red {shape}"))
res={t:[] for t in [50,100,200,300,500]}
with torch.no_grad():
  for img,cap in cases:
    x=torch.tensor(np.array(img)).permute(2,0,1)[None].float()/127.5-1
    ids=tok([cap],padding='max_length',max_length=tok.model_max_length,return_tensors='pt').input_ids
    ctx=te(ids)[0]
    z=vae.encode(x).latent_dist.mean*vae.config.scaling_factor
    ref=vae.decode(z/vae.config.scaling_factor).sample.clamp(-1,1)
    g=torch.Generator().manual_seed(0); n=torch.randn(z.shape,generator=g)
    for t in res:
        a=sch.alphas_cumprod[t]; zt=a.sqrt()*z+(1-a).sqrt()*n
        o=unet(zt,t,ctx).sample
        x0 = a.sqrt()*zt-(1-a).sqrt()*o if pred=='v_prediction' else (zt-(1-a).sqrt()*o)/a.sqrt()
        out=vae.decode(x0/vae.config.scaling_factor).sample.clamp(-1,1)
        mse=((out-ref)**2).mean().item()/4
        res[t].append(10*math.log10(1/mse))
print(m, pred, {t: round(sum(v)/len(v),1) for t,v in res.items()})
